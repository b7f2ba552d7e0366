#!/bin/sh
# The machine tier's job: run as root by vmjob.service at the guest's boot,
# from the run's shared directory, which holds
#   job.env      INSTALL (the README's install command) and SCENARIOS
#   src/         the checkout's tracked files
#   guest/       these scripts
# and gets results.json (read by the host) and job.log (this script's output).
set -eux
job=/mnt/job
. "$job/job.env"
libraries="python3-psutil python3-systemd python3-jeepney"

installed() {   # the libraries dpkg says are installed, as a JSON list
    printf '['; sep=
    for p in $libraries; do
        if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            printf '%s"%s"' "$sep" "$p"; sep=,
        fi
    done
    printf ']'
}

# 2 GiB of swap, as on a workstation; before the install, so the daemon
# starts on a machine that has swap.
fallocate -l 2G /swapfile
chmod 600 /swapfile
mkswap -q /swapfile
swapon /swapfile

mkdir -p /etc/holdingpen
printf '[memory]\nsize = "768M"\ncount = 1\n' > /etc/holdingpen/holdingpen.toml

before=$(installed)
# A fresh copy, as a clone would have it; and package lists, as any Debian
# machine has them (the image is built without).
cp -r "$job/src" /opt/holdingpen
apt-get update -q
install_started=$(date +%s)
(cd /opt/holdingpen && $INSTALL)
install_s=$(( $(date +%s) - install_started ))
after=$(installed)
printf '{"install": {"command": "%s", "libraries_before": %s, "libraries_after": %s, "install_s": %s}}\n' \
    "$INSTALL" "$before" "$after" "$install_s" > "$job/results.json"

useradd -m -G holdingpen alice   # may borrow from anywhere (polkit/50-holdingpen.rules)
useradd -m bob                   # may not

python3 "$job/guest/scenario.py" "$job/results.json" $SCENARIOS
