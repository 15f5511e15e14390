"""The admin service: the local unix socket every ``replicad`` command talks to.

``framing`` is the pure wire codec, ``dispatch`` maps requests to store
operations, ``server`` is the trio glue, ``client`` the blocking client the
command line uses.  The protocol is described in ``protocol-spec/admin.md``.
"""
