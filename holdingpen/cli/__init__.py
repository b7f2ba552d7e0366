"""The commands, thin shells over pen/ and lock/: parse, call, print, exit.

holdingpen (serve, status, check), gatekeeper, perflock (perflock and pls),
wholock.
"""
