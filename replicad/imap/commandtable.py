"""Every IMAP command: the states it is valid in and its handler (RFC 3501 §6).

One table, so adding a command touches one place: its record in
:mod:`replicad.imap.commands`, its grammar, its handler, and a line here.
"""

from __future__ import annotations

from collections.abc import Mapping

from replicad.imap import authcmds, mailboxcmds, searchcmd, selectedcmds
from replicad.imap import commands as c
from replicad.imap.session import ANY, AUTHENTICATED, NOT_AUTHENTICATED, SELECTED, Route

COMMANDS: Mapping[type[c.Command], Route] = {
    # any state (RFC 3501 §6.1)
    c.Capability: Route(ANY, authcmds.capability),
    c.Noop: Route(ANY, authcmds.noop),
    c.Logout: Route(ANY, authcmds.logout),
    c.Id: Route(ANY, authcmds.ident),
    # not authenticated (§6.2)
    c.StartTls: Route(NOT_AUTHENTICATED, authcmds.starttls),
    c.Login: Route(NOT_AUTHENTICATED, authcmds.login),
    c.Authenticate: Route(NOT_AUTHENTICATED, authcmds.authenticate),
    # authenticated (§6.3)
    c.Enable: Route(AUTHENTICATED, authcmds.enable),
    c.Namespace: Route(AUTHENTICATED, authcmds.namespace),
    c.Idle: Route(AUTHENTICATED, authcmds.idle),
    c.Select: Route(AUTHENTICATED, selectedcmds.select),
    c.Create: Route(AUTHENTICATED, mailboxcmds.create),
    c.Delete: Route(AUTHENTICATED, mailboxcmds.delete),
    c.Rename: Route(AUTHENTICATED, mailboxcmds.rename),
    c.Subscribe: Route(AUTHENTICATED, mailboxcmds.subscribe),
    c.Unsubscribe: Route(AUTHENTICATED, mailboxcmds.unsubscribe),
    c.List: Route(AUTHENTICATED, mailboxcmds.list_mailboxes),
    c.Lsub: Route(AUTHENTICATED, mailboxcmds.lsub),
    c.Status: Route(AUTHENTICATED, mailboxcmds.status),
    c.Append: Route(AUTHENTICATED, mailboxcmds.append),
    # selected (§6.4)
    c.Check: Route(SELECTED, selectedcmds.check),
    c.Close: Route(SELECTED, selectedcmds.close),
    c.Unselect: Route(SELECTED, selectedcmds.unselect),
    c.Expunge: Route(SELECTED, selectedcmds.expunge),
    c.Search: Route(SELECTED, searchcmd.search),
    c.Fetch: Route(SELECTED, selectedcmds.fetch),
    c.Store: Route(SELECTED, selectedcmds.store),
    c.Copy: Route(SELECTED, selectedcmds.copy),
    c.Move: Route(SELECTED, selectedcmds.move),
}
