"""What the commands of both products share: cmdline (parsing), text
(wording), exits (exit codes), job (running CMD) and deathsig."""
