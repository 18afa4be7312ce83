"""The SFTP server schools push their exports to: asyncssh, extended at its own seams.

`InboxSSHServer` (one per connection) admits connections (defender, limits),
authenticates tenants and counts failures; `SftpService` holds what all
connections share (tenants, defender, counters) and starts the listener with
explicit modern algorithms and nothing but the `sftp` subsystem.

Legacy algorithms: key exchange, ciphers, MACs and the host key algorithm are
agreed before the client says who it is, so they cannot depend on the tenant.
A tenant with `legacy_algorithms = true` may (1) sign with an `ssh-rsa` (SHA-1)
user key on the main listener, and (2) log in on the optional `legacy_listen`
listener, which also offers group14-sha1, ssh-rsa host key signatures and
hmac-sha1; nobody else may log in there. Both listeners share this service: the
same jail, limits, defender, reload and stop.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from ingestd.config import TenantConfig
from ingestd.logging import get_logger
from ingestd.sources.sftp.addresses import ip_allowed
from ingestd.sources.sftp.auth import key_allowed, parse_public_keys, verify_password_async
from ingestd.sources.sftp.defender import Defender
from ingestd.sources.sftp.hostkeys import load_host_keys
from ingestd.sources.sftp.jail import (
    CompletedUpload,
    JailedSFTPServer,
    UploadLimits,
    remove_stale_uploads,
)
from ingestd.sources.sftp.settings import SftpConfig

INBOX = "inbox"

KEX_ALGS = [
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group18-sha512",
    "diffie-hellman-group-exchange-sha256",
]
ENCRYPTION_ALGS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
]
MAC_ALGS = ["hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com"]
SIGNATURE_ALGS = [
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
]
# The legacy listener offers these as well (asyncssh's names), after the modern ones.
LEGACY_KEX_ALGS = [*KEX_ALGS, "diffie-hellman-group14-sha1"]
LEGACY_MAC_ALGS = [*MAC_ALGS, "hmac-sha1"]
LEGACY_SIGNATURE_ALGS = [*SIGNATURE_ALGS, "ssh-rsa"]
# User-auth signatures that hash with SHA-1: only tenants with legacy_algorithms may use them.
SHA1_SIGNATURES = frozenset({b"ssh-rsa", b"ssh-dss", b"x509v3-ssh-rsa", b"x509v3-ssh-dss"})


@dataclass(slots=True)
class _Tenant:
    config: TenantConfig
    keys: list[asyncssh.SSHKey]


@dataclass(slots=True)
class SftpService:
    """Everything the connections share; `start()` listens, `reload()` swaps tenants."""

    config: SftpConfig
    state_dir: Path
    tenants: dict[str, TenantConfig]
    on_upload: Callable[[CompletedUpload], None] | None = None
    defender: Defender = field(init=False)
    _tenants: dict[str, _Tenant] = field(init=False, default_factory=dict)
    connections: Counter[str] = field(init=False, default_factory=Counter)  # per IP
    sessions: Counter[str] = field(init=False, default_factory=Counter)  # per tenant
    _server: asyncssh.SSHAcceptor | None = field(init=False, default=None)
    _legacy_server: asyncssh.SSHAcceptor | None = field(init=False, default=None)
    _live: set[InboxSSHServer] = field(init=False, default_factory=set)
    _jails: set[JailedSFTPServer] = field(init=False, default_factory=set)  # open SFTP sessions
    log: object = field(init=False, default=None)
    _reaper: asyncio.Task[None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.defender = Defender(self.config.defender)
        self.reload(self.tenants)
        self.log = get_logger()

    def reload(self, tenants: dict[str, TenantConfig]) -> None:
        """New tenant list: new schools can log in, removed ones cannot (sessions stay)."""
        parsed = {}
        for tenant_id, tenant in tenants.items():
            if not tenant.enabled:
                continue
            parsed[tenant_id] = _Tenant(tenant, parse_public_keys(tenant.authorized_keys))
            (self.state_dir / INBOX / tenant_id).mkdir(parents=True, exist_ok=True)
        self._tenants = parsed
        self.tenants = tenants

    def uploads_in_flight(self) -> int:
        """Files being uploaded right now, over all sessions."""
        return sum(jail.open_uploads for jail in list(self._jails))

    def tenant(self, username: str) -> _Tenant | None:
        """The enabled tenant called `username`, if any."""
        return self._tenants.get(username)

    @property
    def port(self) -> int:
        """The port actually listened on (useful with `listen = "127.0.0.1:0"`)."""
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def legacy_port(self) -> int | None:
        """The legacy listener's port, None when `legacy_listen` is unset."""
        if self._legacy_server is None:
            return None
        return self._legacy_server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        """Listen. Host keys are made on first start; temp files of uploads that a previous
        run never finished are removed (no session can own them now)."""
        keys = await asyncio.to_thread(load_host_keys, self.state_dir)
        stale = await asyncio.to_thread(remove_stale_uploads, self.state_dir / INBOX)
        if stale:
            self.log.info("sftp.stale_uploads_removed", count=stale)
        limits = UploadLimits(
            max_file_bytes=self.config.max_file_bytes,
            max_inbox_bytes=self.config.max_inbox_bytes,
            min_free_bytes=self.config.min_free_bytes,
            max_open_files=self.config.max_open_files_per_session,
        )

        def sftp_factory(chan: asyncssh.SSHServerChannel) -> JailedSFTPServer:
            tenant = chan.get_extra_info("username")
            owner = chan.get_connection().get_owner()
            jail = JailedSFTPServer(
                chan,
                tenant=tenant,
                root=self.state_dir / INBOX / tenant,
                limits=limits,
                on_upload=self.on_upload,
                on_activity=owner.touch if isinstance(owner, InboxSSHServer) else None,
                on_exit=self._jails.discard,
            )
            self._jails.add(jail)
            return jail

        options = dict(
            server_host_keys=keys,
            sftp_factory=sftp_factory,
            allow_scp=False,
            allow_pty=False,
            agent_forwarding=False,
            gss_host=None,
            encryption_algs=ENCRYPTION_ALGS,
            compression_algs=["none"],
            login_timeout=self.config.login_timeout_seconds,
            keepalive_interval=self.config.keepalive_seconds or None,
            keepalive_count_max=3,
            window=8 << 20,  # a larger window: fewer stalls on fast links (SFTP.md)
            max_pktsize=256 << 10,  # a 32 KiB SFTP write then fits one SSH packet, not two
            server_version="ingestd",
        )
        self._server = await asyncssh.listen(
            self.config.host,
            self.config.port,
            server_factory=lambda: InboxSSHServer(self),
            kex_algs=KEX_ALGS,
            mac_algs=MAC_ALGS,
            # Host key signatures and the server-sig-algs the client is told about. asyncssh
            # verifies a user's signature with any algorithm of the key's type whatever this
            # says: SHA-1 user signatures are refused in InboxSSHServer instead.
            signature_algs=SIGNATURE_ALGS,
            **options,
        )
        self.log.info("sftp.listening", address=self.config.host, port=self.port)
        if self.config.legacy_address is not None:
            host, port = self.config.legacy_address
            try:
                self._legacy_server = await asyncssh.listen(
                    host,
                    port,
                    server_factory=lambda: InboxSSHServer(self, legacy=True),
                    kex_algs=LEGACY_KEX_ALGS,
                    mac_algs=LEGACY_MAC_ALGS,
                    signature_algs=LEGACY_SIGNATURE_ALGS,
                    **options,
                )
            except BaseException:
                self._server.close()
                self._server = None
                raise
            self.log.info("sftp.listening", address=host, port=self.legacy_port, legacy=True)
        self._reaper = asyncio.create_task(self._reap_idle(), name="sftp-idle-reaper")

    async def _reap_idle(self) -> None:
        """Close connections with no SFTP request for `idle_timeout_seconds` (asyncssh has
        no idle timeout of its own; an upload in progress is activity)."""
        limit = self.config.idle_timeout_seconds
        while True:
            await asyncio.sleep(min(30.0, max(limit / 4, 0.05)))
            now = time.monotonic()
            for conn in list(self._live):
                if conn.tenant is not None and now - conn.last_activity > limit:
                    conn.log.info("sftp.idle_timeout", seconds=limit)
                    conn.close()

    async def stop(self, grace_seconds: float = 30.0) -> None:
        """Stop accepting, let uploads in flight finish up to `grace_seconds`, then close
        every connection (an upload cut off leaves nothing behind)."""
        if self._server is None:
            return
        if self._reaper is not None:
            self._reaper.cancel()
        self._server.close()
        if self._legacy_server is not None:
            self._legacy_server.close()
        deadline = asyncio.get_running_loop().time() + grace_seconds
        while self.uploads_in_flight() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        if self.uploads_in_flight():
            self.log.warning("sftp.stop_cut_uploads", uploads=self.uploads_in_flight())
        for conn in list(self._live):
            conn.close()
        await self._server.wait_closed()
        self._server = None
        if self._legacy_server is not None:
            await self._legacy_server.wait_closed()
            self._legacy_server = None


class InboxSSHServer(asyncssh.SSHServer):
    """One connection: admission, authentication, the audit trail."""

    def __init__(self, service: SftpService, *, legacy: bool = False) -> None:
        self.service = service
        self.legacy = legacy  # accepted on the legacy listener: legacy tenants only
        self.conn: asyncssh.SSHServerConnection | None = None
        self.ip = "?"
        self.tenant: str | None = None  # set once authentication has completed
        self._accepted: tuple[str, str] | None = None  # (tenant, method) of the last yes
        self.sha1_signature = False  # the accepted key signed with SHA-1
        self.counted = False
        self.attempted = False  # a password or key was tried (scored on its own)
        self.last_activity = time.monotonic()
        self.log = get_logger()

    def touch(self) -> None:
        """An SFTP request arrived: the connection is not idle."""
        self.last_activity = time.monotonic()

    def close(self) -> None:
        """Drop the connection."""
        if self.conn is not None:
            self.conn.close()

    # --- admission ---------------------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        """Banned -> connection limits, before anything else happens."""
        self.conn = conn
        self.ip = (conn.get_extra_info("peername") or ("?", 0))[0]
        self.log = get_logger(ip=self.ip)
        service = self.service
        reason = None
        if service.defender.is_banned(self.ip):
            reason = "banned"
        elif sum(service.connections.values()) >= service.config.max_connections:
            reason = "max_connections"
        elif service.connections[self.ip] >= service.config.max_connections_per_ip:
            reason = "max_connections_per_ip"
        if reason:
            self.log.warning("sftp.connection_refused", reason=reason)
            conn.abort()
            return
        service.connections[self.ip] += 1
        service._live.add(self)
        self.counted = True
        self._check_signature_algorithm(conn)
        _feed_packet_by_packet(conn)

    def _check_signature_algorithm(self, conn: asyncssh.SSHServerConnection) -> None:
        """Refuse SHA-1 user-key signatures (ssh-rsa) of tenants without legacy_algorithms.

        asyncssh verifies a public-key signature with any algorithm the key type knows,
        ssh-rsa included, whatever `signature_algs` says, and `SSHServer.validate_public_key`
        never sees the signature. The signature's algorithm name is its first SSH string,
        so this connection's `validate_public_key(username, key_data, msg, signature)`
        (asyncssh's own check, called by its public-key auth) is wrapped: a SHA-1
        signature is refused before asyncssh verifies it, unless the tenant opted in.
        """
        verify = conn.validate_public_key

        async def validate_public_key(
            username: str, key_data: bytes, msg: bytes, signature: bytes
        ) -> bool:
            algorithm = _signature_algorithm(signature) if signature else None
            if algorithm in SHA1_SIGNATURES:
                tenant = self.service.tenant(username)
                if tenant is None or not tenant.config.legacy_algorithms:
                    self.attempted = True
                    self._fail(username, tenant, "publickey", "sha1_signature_not_allowed")
                    return False
            ok = await verify(username, key_data, msg, signature)
            if ok and signature:
                self.sha1_signature = algorithm in SHA1_SIGNATURES
            elif not ok:
                self._accepted = None  # the key was fine, its signature was not
            return ok

        conn.validate_public_key = validate_public_key  # type: ignore[method-assign]

    def connection_lost(self, exc: Exception | None) -> None:
        """Release the counters; a connection that never tried to log in is scored by the
        defender (`score_no_auth`, nothing by default)."""
        service = self.service
        if not self.counted:
            return
        self.counted = False
        service._live.discard(self)
        service.connections[self.ip] -= 1
        if service.connections[self.ip] <= 0:
            del service.connections[self.ip]
        if self.tenant is not None:
            service.sessions[self.tenant] -= 1
            if service.sessions[self.tenant] <= 0:
                del service.sessions[self.tenant]
            self.log.info("sftp.logout", tenant=self.tenant)
        elif not self.attempted:  # a failed attempt was counted already; a slow check is not one
            service.defender.failed(self.ip, "no_login")

    # --- authentication ------------------------------------------------------------------

    def begin_auth(self, username: str) -> bool:
        """Every user must authenticate."""
        return True

    def auth_completed(self) -> None:
        """The login: counted and logged only now (a key accepted when offered, before its
        signature is checked, or an attempt cancelled by a newer one, is not a login)."""
        if self.tenant is not None:
            return
        username, method = self._accepted or (None, "?")
        if username is None or self.conn.get_extra_info("username") != username:
            # Cannot happen (every method answers through _decide); never serve it.
            self.log.error("sftp.login_unexpected", username=username)
            self.close()
            return
        self.tenant = username
        self.service.sessions[username] += 1
        self.log = get_logger(ip=self.ip, tenant=username)
        client = self.conn.get_extra_info("client_version") if self.conn else None
        legacy = {"legacy": True} if self.legacy or self.sha1_signature else {}
        self.log.info("sftp.login", method=method, client=client, **legacy)

    def password_auth_supported(self) -> bool:
        return True

    def kbdint_auth_supported(self) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def get_kbdint_challenge(self, username: str, lang: str, submethods: str):
        """Keyboard-interactive as a password prompt (some clients only use this)."""
        return "", "", "", [("Password: ", False)]

    async def validate_kbdint_response(self, username: str, responses: list[str]) -> bool:
        if len(responses) != 1:
            return False
        return await self._password(username, responses[0], "keyboard-interactive")

    async def validate_password(self, username: str, password: str) -> bool:
        return await self._password(username, password, "password")

    async def _password(self, username: str, password: str, method: str) -> bool:
        self.attempted = True
        tenant = self.service.tenant(username)
        stored = tenant.config.password_hash if tenant else None
        ok = await verify_password_async(stored, password)  # same cost for unknown users
        return self._decide(username, tenant, ok, method)

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # Called once to probe and once with the signature: only the answer is given here;
        # a refused key is not counted (clients offer several keys in turn), a tenant's own
        # key on the legacy listener without legacy_algorithms is.
        tenant = self.service.tenant(username)
        ok = tenant is not None and key_allowed(key, tenant.keys)
        if ok:
            return self._decide(username, tenant, True, "publickey", count_failure=False)
        return False

    def _decide(
        self,
        username: str,
        tenant: _Tenant | None,
        ok: bool,
        method: str,
        *,
        count_failure: bool = True,
    ) -> bool:
        reason = None
        if not ok:
            reason = "unknown_user" if tenant is None else "wrong_credentials"
        elif self.legacy and not tenant.config.legacy_algorithms:
            reason = "legacy_listener_not_allowed"
            count_failure = True  # the right key or password, on a listener not for it
        elif not ip_allowed(self.ip, tenant.config.allow_ips):
            reason = "ip_not_allowed"
        elif self.service.sessions[username] >= self.service.config.max_sessions_per_tenant:
            reason = "max_sessions_per_tenant"
        if reason:
            self._fail(username, tenant, method, reason, count=count_failure)
            return False
        # auth_completed() follows at once when this answer ends the authentication.
        self._accepted = (username, method)
        return True

    def _fail(
        self, username: str, tenant: _Tenant | None, method: str, reason: str, *, count=True
    ) -> None:
        self._accepted = None
        client = self.conn.get_extra_info("client_version") if self.conn else None
        self.log.warning(
            "sftp.login_failed", tenant=username if tenant else None, method=method,
            reason=reason, client=client, **({"legacy": True} if self.legacy else {}),
        )  # fmt: skip
        if count and reason != "max_sessions_per_tenant":
            self.attempted = True  # counted here: not once more as "no_login" at the end
            self.service.defender.failed(self.ip, reason)


def _feed_packet_by_packet(conn: asyncssh.SSHServerConnection) -> None:
    """Hand asyncssh received bytes one SSH packet at a time instead of 256 KiB at a time.

    asyncssh keeps unparsed input in one `bytes` (`_inpbuf`): it appends every read to it
    and, for every packet parsed, slices off the packet, copying what remains. A read
    holds several packets (asyncio reads up to 256 KiB; OpenSSH's sftp sends ~40 KiB
    packets), so each received byte was copied ~6 times on the event loop (~3 GB of
    memmove for a 500 MB upload). Any split of a TCP stream is valid input, so this
    wrapper of the connection's `data_received` only cuts each read where the packet
    being received ends plus the next packet's first block (read from asyncssh's receive
    state, relative to what it already holds; in any other state, or should those
    attributes ever change, the read goes in whole as before): each slice parses one
    packet and leaves nothing to copy again.
    """
    receive = conn.data_received

    def wanted() -> int:
        # The rest of the packet being received plus the next packet's first block (its
        # header), so that one call parses one packet and leaves nothing behind.
        handler = getattr(conn, "_recv_handler", None)
        func = getattr(handler, "__func__", None)
        try:
            if func is _RECV_PKTHDR:
                need = conn._recv_blocksize
            elif func is _RECV_PACKET:
                need = 4 + conn._pktlen + conn._recv_macsize
            else:
                return 0
            return need - len(conn._inpbuf)
        except (AttributeError, TypeError):
            return 0

    def data_received(data: bytes, datatype: object = None) -> None:
        need = wanted()
        if not 0 < need < len(data):
            receive(data)
            return
        view = memoryview(data)  # slices of it are not copies
        while 0 < need < len(view):
            receive(view[:need])
            view = view[need:]
            if getattr(conn, "_transport", None) is None:
                return  # asyncssh closed the connection (a bad packet): nothing more
            need = wanted()
        if view:
            receive(view)

    conn.data_received = data_received  # type: ignore[method-assign]


_RECV_PKTHDR = getattr(asyncssh.SSHServerConnection, "_recv_pkthdr", None)
_RECV_PACKET = getattr(asyncssh.SSHServerConnection, "_recv_packet", None)


def _signature_algorithm(signature: bytes) -> bytes | None:
    """The algorithm name an SSH signature blob starts with (`string alg, string sig`)."""
    size = int.from_bytes(signature[:4], "big")
    if len(signature) < 4 + size or size > 64:
        return None
    return signature[4 : 4 + size]
