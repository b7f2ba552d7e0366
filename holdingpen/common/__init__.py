"""What the commands of both products share: cmdline (parsing), text
(wording), exits (exit codes), job (running CMD), deathsig, and jsonline
(JSON without the cost of importing json)."""
