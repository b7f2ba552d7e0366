#!/bin/sh
# Build the machine tier's Debian 12 disk image from Debian's own packages.
#
#   image.sh OUTDIR PACKAGE...
#
# Writes OUTDIR/disk.img (raw ext4, 8 GiB sparse), OUTDIR/vmlinuz and
# OUTDIR/initrd.img. Run as root. The harness (vm.py) caches OUTDIR under a
# hash of this script and the package list, so any change here rebuilds it.
#
# The mirror is not named: mmdebstrap takes the host's apt sources and writes
# them into the image, so the guest's apt uses the same archive.
set -eu
out=$1; shift
packages=$(echo "$@" | tr ' ' ',')
root=$out/root

mmdebstrap --variant=minbase --include="$packages" bookworm "$root"

# /dev/vda is the per-run overlay; /mnt/job is the run's shared directory (9p).
printf '/dev/vda / ext4 rw,relatime 0 1\njob /mnt/job 9p trans=virtio,version=9p2000.L,msize=1048576,nofail 0 0\n' \
    > "$root/etc/fstab"
mkdir -p "$root/mnt/job"
echo vmtest > "$root/etc/hostname"
chroot "$root" passwd -d root >/dev/null

# The network qemu's "-nic user" offers: DHCP, and its DNS forwarder (there is
# no resolved in the image to learn it from DHCP).
cat > "$root/etc/systemd/network/50-qemu.network" <<'UNIT'
[Match]
Name=en*
[Network]
DHCP=ipv4
UNIT
echo "nameserver 10.0.2.3" > "$root/etc/resolv.conf"
chroot "$root" systemctl enable -q systemd-networkd systemd-networkd-wait-online

# Runs the shared job once the system is up, then powers off. The marker line
# on the console tells the harness the guest really booted.
cat > "$root/etc/systemd/system/vmjob.service" <<'UNIT'
[Unit]
Description=the machine tier's job, from the shared directory
After=multi-user.target network-online.target mnt-job.mount
Wants=network-online.target
Requires=mnt-job.mount
[Service]
Type=oneshot
StandardOutput=journal+console
ExecStartPre=/bin/echo holdingpen-vm: job started
ExecStart=/bin/sh -c '/mnt/job/job.sh > /mnt/job/job.log 2>&1; echo "rc=$?" >> /mnt/job/job.log'
ExecStartPost=/bin/systemctl --no-block poweroff
[Install]
WantedBy=multi-user.target
UNIT
chroot "$root" systemctl enable -q vmjob.service

cp -L "$root"/boot/vmlinuz-* "$out/vmlinuz"
cp -L "$root"/boot/initrd.img-* "$out/initrd.img"
chmod 644 "$out/vmlinuz" "$out/initrd.img"
mkfs.ext4 -q -F -d "$root" -L root "$out/disk.img" 8G
rm -rf "$root"
