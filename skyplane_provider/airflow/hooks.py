"""``SkyplaneHook``: Airflow connections -> a :class:`~skyplane_provider.transfer.TransferRequest`.

Users already have connections for their clouds, so the hook reads the standard ones, through the
cloud's own Airflow provider where it is installed, exactly as the user's other tasks read them:

- amazon (``apache-airflow-providers-amazon``): an ``aws`` connection that carries credentials of its
  own is read by ``AwsBaseHook`` (profiles, web identity, every ``assume_role_method``); the gateways
  get its session's keys, renewed with that session.
- google (``apache-airflow-providers-google``): a ``google_cloud_platform`` connection that names
  credentials (a key, ``key_secret_name``, ``credential_config_file``, ``impersonation_chain``...) is
  read by ``GoogleBaseHook``; the gateways get an OAuth 2.0 access token of those credentials and its
  expiry, refreshed here, never the key.
- microsoft-azure (``apache-airflow-providers-microsoft-azure``): a ``wasb`` connection is resolved by
  ``WasbHook``; the gateways get the account key or SAS of the client it builds, or, for an Entra ID
  identity (``tenant_id`` + client secret, or ``DefaultAzureCredential``: managed or workload identity),
  its access token for Blob Storage and its expiry, renewed here.

Without the provider the hook reads the connection's fields itself, and refuses those only the
provider's hook could honour, saying so:

==========================  ===============================================================================
connection type             fields read
==========================  ===============================================================================
``aws``                     login = access key id, password = secret key; extra ``aws_session_token``,
                            ``region_name``, ``endpoint_url`` (or ``service_config.s3.endpoint_url``),
                            ``role_arn`` (+ ``assume_role_kwargs``): assumed via STS by botocore, which
                            renews the keys; the gateways get the temporary keys
``google_cloud_platform``   extra ``key_path`` (read here, so remote gateways need no file),
                            ``keyfile_dict``, ``project``, ``endpoint`` (an emulator URL, ours), ``anonymous``
``wasb``                    extra ``connection_string``; or login = account + password = key; or extra
                            ``sas_token``; host = account URL (default ``https://ACCOUNT.blob.core.windows.net``)
``skyplane`` (ours)         extra ``provisioner`` (``ssh``...), ``provisioner_settings`` and ``secret_settings``
                            (JSON objects, the second for secrets; see docs/provisioners.md)
==========================  ===============================================================================

Each side has its own connection (``src_conn_id``; ``dst_conn_id``, one per destination), and each
becomes an entry of the credentials document keyed by that store's root URI (``s3://bucket``), so two
AWS accounts in one transfer do not clash. A side without a connection uses the SDKs' environment.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from airflow.sdk import BaseHook, Connection, ObjectStoragePath
from airflow.sdk.exceptions import AirflowNotFoundException
from airflow.sdk.log import mask_secret

from gateway.stores.uri import StoreURI, parse_uri
from planner.errors import BadOptionError, CredentialsError
from skyplane_provider.redaction import secret_values
from skyplane_provider.transfer import TransferRequest
from skyplane_provider.transfer.credential_sources import (AwsSessionSource, AzureTokenSource, CredentialSource,
                                                           GoogleAuthSource, assume_role, document)

from .paths import is_path, path_uri
from .provider import CONN_TYPE

#: A source or destination: a URI, or Airflow's ``ObjectStoragePath`` (which brings its connection).
Target = str | ObjectStoragePath

log = logging.getLogger(__name__)

#: Which connection type serves which URI scheme.
CONN_TYPES = {"s3": "aws", "gs": "google_cloud_platform", "az": "wasb"}
#: The fields of a ``skyplane`` connection (its form, declared in provider.yaml); ``secret_settings``
#: is merged over ``provisioner_settings``.
SKYPLANE_FIELDS = ("provisioner", "provisioner_settings", "secret_settings")


class SkyplaneHook(BaseHook):
    """Builds transfer requests from Airflow connections.

    :param src_conn_id: connection for the source store (``aws``, ``google_cloud_platform`` or ``wasb``).
    :param dst_conn_id: connection for the destination, or a list aligned with the destinations
        (``None`` entries use the environment).
    :param skyplane_conn_id: a ``skyplane`` connection holding provisioner settings.
    """

    conn_name_attr = "skyplane_conn_id"
    default_conn_name = "skyplane_default"
    conn_type = CONN_TYPE
    hook_name = "Skyplane"

    def __init__(self, src_conn_id: str | None = None, dst_conn_id: str | Sequence[str | None] | None = None,
                 skyplane_conn_id: str | None = None) -> None:
        super().__init__()
        self.src_conn_id = src_conn_id
        self.dst_conn_id = dst_conn_id
        self.skyplane_conn_id = skyplane_conn_id
        #: The sources made per transfer's sides: the credentials document and the keeper that
        #: renews it must ask the same sources (an assumed role is assumed once, then refreshed).
        self._made: dict[tuple, list[CredentialSource]] = {}

    def get_conn(self) -> dict:
        """The provisioner setup: ``{"provisioner": NAME, "provisioner_settings": {...}}``."""
        name, settings = self.provisioner()
        return {"provisioner": name, "provisioner_settings": settings}

    # -- the request ---------------------------------------------------------------------------
    def make_request(self, src: Target, dsts: Target | Sequence[Target], *, provisioner: str | None = None,
                     **options: Any) -> TransferRequest:
        """A request for ``src`` -> ``dsts`` with the connections' credentials and provisioner.

        ``src`` and each destination are URIs or ``ObjectStoragePath`` objects (which bring their
        connection). ``provisioner`` overrides the ``skyplane`` connection's (default ``local``);
        ``options`` are the other :class:`TransferRequest` fields. Raises ``BadInputError`` /
        ``CredentialsError`` subclasses of ``SkyplaneError`` on bad URIs, options or connections.
        """
        sides = self.sides(src, dsts)
        name, settings = self.provisioner(provisioner)
        try:
            request = TransferRequest(src=sides[0][0], dsts=[uri for uri, _ in sides[1:]], provisioner=name,
                                      provisioner_settings=settings, credentials=self._credentials(sides), **options)
        except TypeError as exc:
            raise BadOptionError(f"unknown transfer option: {exc}") from exc
        request.validate()
        return request

    def sides(self, src: Target, dsts: Target | Sequence[Target]) -> list[tuple[str, str | None]]:
        """``(URI, connection id)`` of the source, then of each destination: the hook's connection ids,
        or those the ``ObjectStoragePath`` objects carry (giving both, different, is refused)."""
        dsts = list(dsts) if isinstance(dsts, (list, tuple)) else [dsts]
        given = [("src_conn_id", self.src_conn_id), *(("dst_conn_id", c) for c in self._dst_conn_ids(len(dsts)))]
        return [self._side(target, what, conn_id) for target, (what, conn_id) in zip([src, *dsts], given)]

    def _side(self, target: Target, what: str, given: str | None) -> tuple[str, str | None]:
        if not is_path(target):
            return target, given
        carried = target.conn_id
        if given is not None and carried is not None and given != carried:
            raise BadOptionError(f"{target} carries connection {carried!r} but {what} is {given!r}",
                                 hint=f"drop {what}, or the connection id from the path")
        return path_uri(target, self.storage_account), given or carried

    def credentials(self, src: Target, dsts: Target | Sequence[Target]) -> dict[str, dict]:
        """The credentials document for this transfer: one entry per store that has a connection.

        Airflow masks a connection's own password and secret extras in task logs; the secrets made
        here (keys of an assumed role, a key file's content) are registered with its masker too."""
        return self._credentials(self.sides(src, dsts))

    def _credentials(self, sides: list[tuple[str, str | None]]) -> dict[str, dict]:
        doc = document(self._sources(sides))
        for secret in secret_values(doc):
            mask_secret(secret)
        return doc

    def credential_sources(self, src: Target, dsts: Target | Sequence[Target]) -> list[CredentialSource]:
        """One source per store that has a connection: its entry now, and again when renewed (an
        assumed role's keys come from botocore's refreshing credentials, docs/credentials.md)."""
        return self._sources(self.sides(src, dsts))

    def _sources(self, sides: list[tuple[str, str | None]]) -> list[CredentialSource]:
        made = self._made.get(tuple(sides))
        if made is None:
            made = self._made[tuple(sides)] = self._make_sources(sides)
        return made

    def _make_sources(self, sides: list[tuple[str, str | None]]) -> list[CredentialSource]:
        by_root: dict[str, tuple[str, CredentialSource]] = {}
        for uri, conn_id in sides:
            if conn_id is None:
                continue
            store = parse_uri(uri)
            seen = by_root.get(store.root_uri)
            if seen is not None and seen[0] != conn_id:
                raise BadOptionError(f"two different connections are given for {store.root_uri}",
                                     hint="use one connection per bucket or container")
            if seen is None:
                by_root[store.root_uri] = (conn_id, self.store_source(conn_id, store))
        return [source for _, source in by_root.values()]

    def _dst_conn_ids(self, n: int) -> list[str | None]:
        ids = self.dst_conn_id
        if ids is None or isinstance(ids, str):
            return [ids] * n
        ids = list(ids)
        if len(ids) != n:
            raise BadOptionError(f"dst_conn_id lists {len(ids)} connections for {n} destinations",
                                 hint="give one connection id per destination (None for the environment)")
        return ids

    def storage_account(self, conn_id: str) -> str | None:
        """The storage account a ``wasb`` connection names: its connection string's ``AccountName``,
        its login, or its host (``https://ACCOUNT.blob...``; an emulator's ``http://IP:PORT/ACCOUNT``)."""
        conn = self._connection(conn_id)
        extra = _extra(conn, prefix="extra__wasb__")
        fields = dict(p.split("=", 1) for p in str(extra.get("connection_string", "")).split(";") if "=" in p)
        if fields.get("AccountName") or conn.login:
            return fields.get("AccountName") or conn.login
        url = urlsplit(conn.host if conn.host and "://" in conn.host else f"https://{conn.host or ''}")
        if url.hostname and url.hostname.replace(".", "").isdigit():
            return url.path.strip("/").split("/", 1)[0] or None
        return (url.hostname or "").split(".", 1)[0] or None

    # -- one store's entry ---------------------------------------------------------------------
    def store_source(self, conn_id: str, store: StoreURI) -> CredentialSource:
        """The credentials source for ``store`` from connection ``conn_id``."""
        if store.scheme == "file":
            raise BadOptionError(f"connection {conn_id!r} was given for the local path {store}",
                                 hint="local paths need no connection; drop the conn id")
        conn = self._connection(conn_id)
        expected = CONN_TYPES[store.scheme]
        if conn.conn_type != expected:
            raise CredentialsError(f"connection {conn_id!r} has type {conn.conn_type!r}, but {store.root_uri} "
                                   f"needs a {expected!r} connection", hint="pick the connection for that cloud")
        make = {"aws": aws_source, "google_cloud_platform": gcp_source, "wasb": wasb_source}[expected]
        return make(conn, store.root_uri)

    def _connection(self, conn_id: str) -> Connection:
        try:
            return self.get_connection(conn_id)
        except AirflowNotFoundException as exc:
            raise CredentialsError(f"connection {conn_id!r} is not defined", hint="create it in Admin > "
                                   f"Connections or set AIRFLOW_CONN_{conn_id.upper()}") from exc

    # -- provisioner ---------------------------------------------------------------------------
    def provisioner(self, override: str | None = None) -> tuple[str, dict]:
        """``(name, settings)`` from the ``skyplane`` connection; ``override`` wins over its name."""
        if self.skyplane_conn_id is None:
            return override or "local", {}
        conn = self._connection(self.skyplane_conn_id)
        if conn.conn_type != CONN_TYPE:
            raise CredentialsError(f"connection {self.skyplane_conn_id!r} has type {conn.conn_type!r}, "
                                   f"not {CONN_TYPE!r}", hint="create a connection of type skyplane")
        extra = _extra(conn, prefix=f"extra__{CONN_TYPE}__")
        unknown = set(extra) - set(SKYPLANE_FIELDS)
        if unknown:
            raise BadOptionError(f"unknown fields {sorted(unknown)} in connection {conn.conn_id!r}",
                                 hint=f"its fields are {', '.join(SKYPLANE_FIELDS)} (the connection form's)")
        settings = {**_json_field(conn, extra, "provisioner_settings"), **_json_field(conn, extra, "secret_settings")}
        for secret in secret_values(settings):
            mask_secret(secret)
        return override or extra.get("provisioner") or "local", settings


def aws_source(conn: Connection, key: str) -> CredentialSource:
    """The ``s3`` entry of an ``aws`` connection: through the amazon provider's hook where it is
    installed (:func:`provider_aws_source`), else from the connection's fields
    (:func:`fields_aws_source`)."""
    return provider_aws_source(conn, key) or fields_aws_source(conn, key)


#: Extras by which an ``aws`` connection names credentials of its own (else the SDK chain serves it).
_AWS_CREDENTIAL_EXTRAS = ("aws_access_key_id", "role_arn", "profile_name", "assume_role_method")


def provider_aws_source(conn: Connection, key: str) -> CredentialSource | None:
    """The ``s3`` entry as the amazon provider's ``AwsBaseHook`` resolves the connection (its profile,
    web identity token, assumed role...), renewed with that hook's session; None where the provider
    is not installed, or the connection names no credentials (the gateways then use the SDK chain,
    as without the provider)."""
    try:
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    except ImportError:
        return None
    extra = _extra(conn)
    if not (conn.login or any(extra.get(name) for name in _AWS_CREDENTIAL_EXTRAS)):
        return None
    hook = AwsBaseHook(aws_conn_id=conn.conn_id, client_type="s3")
    try:
        credentials = hook.get_session().get_credentials()
        if credentials is None:
            raise CredentialsError("the session has no credentials")
        config = hook.conn_config
        source = AwsSessionSource(key, credentials, _prune({
            "region_name": config.region_name, "endpoint_url": config.get_service_endpoint_url("s3")}))
        source.current()  # a profile, token or role that does not work fails here, before any gateway
    except Exception as exc:  # noqa: BLE001 - the provider and botocore raise many classes
        raise CredentialsError(f"connection {conn.conn_id!r}: the amazon provider's hook found no usable "
                               f"credentials: {exc}", hint="check the connection with a task of the amazon "
                                                            "provider, e.g. S3ListOperator") from exc
    return source


def fields_aws_source(conn: Connection, key: str) -> CredentialSource:
    """The ``s3`` entry from an ``aws`` connection's fields; with ``role_arn``, the role's temporary
    keys, asked with the connection's own keys and renewed by botocore before they expire."""
    extra = _extra(conn)
    for unsupported in ("profile_name", "assume_role_method"):
        if extra.get(unsupported) and not (unsupported == "assume_role_method"
                                           and extra[unsupported] == "assume_role"):
            raise CredentialsError(f"connection {conn.conn_id!r}: {unsupported}={extra[unsupported]!r} "
                                   "needs the amazon provider's hook (the gateways may run on other hosts)",
                                   hint="install apache-airflow-providers-amazon, or put keys in "
                                        "login/password, or a role_arn to assume")
    entry = _prune({
        "aws_access_key_id": conn.login or extra.get("aws_access_key_id"),
        "aws_secret_access_key": conn.password or extra.get("aws_secret_access_key"),
        "aws_session_token": extra.get("aws_session_token"),
        "region_name": extra.get("region_name"),
        "endpoint_url": _service(extra, "s3").get("endpoint_url") or extra.get("endpoint_url"),
    })
    if not extra.get("role_arn"):
        return CredentialSource(key, entry)
    source = assume_role(key, entry, extra["role_arn"], session_name=f"Airflow_{conn.conn_id}",
                         extra_args=_json_field(conn, extra, "assume_role_kwargs"),
                         sts_endpoint=_service(extra, "sts").get("endpoint_url") or extra.get("endpoint_url"))
    try:
        source.current()  # a role that cannot be assumed fails here, before any gateway starts
    except Exception as exc:  # noqa: BLE001 - botocore raises ClientError, BotoCoreError and more
        raise CredentialsError(f"connection {conn.conn_id!r}: cannot assume role {extra['role_arn']}: {exc}",
                               hint="check the role's trust policy and the connection's keys") from exc
    return source


def gcp_source(conn: Connection, key: str) -> CredentialSource:
    """The ``gs`` entry of a ``google_cloud_platform`` connection: through the google provider's hook
    where it is installed (:func:`provider_gcp_source`), else from the connection's fields
    (:func:`fields_gcp_source`)."""
    return provider_gcp_source(conn, key) or fields_gcp_source(conn, key)


#: Extras by which a ``google_cloud_platform`` connection names credentials of its own (else
#: application default credentials serve it, on the gateways too).
_GCP_CREDENTIAL_EXTRAS = ("key_path", "keyfile_dict", "key_secret_name", "credential_config_file",
                          "impersonation_chain", "idp_issuer_url")


def provider_gcp_source(conn: Connection, key: str) -> CredentialSource | None:
    """The ``gs`` entry as the google provider's ``GoogleBaseHook`` resolves the connection (a key,
    Secret Manager, workload identity federation, ``impersonation_chain``): the gateways get an
    access token of those credentials and its expiry, renewed here (:class:`GoogleAuthSource`), never
    the key. None where the provider is not installed, or the connection names no credentials."""
    try:
        from airflow.providers.google.common.hooks.base_google import GoogleBaseHook
    except ImportError:
        return None
    extra = _extra(conn, prefix="extra__google_cloud_platform__")
    if not any(extra.get(name) for name in _GCP_CREDENTIAL_EXTRAS):
        return None
    try:
        hook = GoogleBaseHook(gcp_conn_id=conn.conn_id)
        credentials, project = hook.get_credentials_and_project_id()
        source = GoogleAuthSource(key, credentials, _prune({"project": extra.get("project") or project,
                                                             "endpoint": extra.get("endpoint")}))
        source.current()  # a key, role or chain that yields no token fails here, before any gateway
    except Exception as exc:  # noqa: BLE001 - the provider and google-auth raise many classes
        raise CredentialsError(f"connection {conn.conn_id!r}: the google provider's hook found no usable "
                               f"credentials: {exc}", hint="check the connection with a task of the google "
                                                            "provider, e.g. GCSListObjectsOperator") from exc
    log.info("connection %r: access tokens of %s for %s, as the google provider's GoogleBaseHook resolves it",
             conn.conn_id, type(credentials).__name__, key)
    return source


def fields_gcp_source(conn: Connection, key: str) -> CredentialSource:
    """The ``gs`` entry from a ``google_cloud_platform`` connection's fields."""
    return CredentialSource(key, gcp_entry(conn))


def gcp_entry(conn: Connection) -> dict:
    """A ``gs`` credentials entry from a ``google_cloud_platform`` connection's fields."""
    extra = _extra(conn, prefix="extra__google_cloud_platform__")
    for unsupported in ("credential_config_file", "impersonation_chain", "key_secret_name", "idp_issuer_url"):
        if extra.get(unsupported):
            raise CredentialsError(f"connection {conn.conn_id!r}: {unsupported} needs the google provider's hook",
                                   hint="install apache-airflow-providers-google, or use a service-account key "
                                        "(key_path or keyfile_dict)")
    info = extra.get("keyfile_dict")
    if isinstance(info, str) and info.strip():
        try:
            info = json.loads(info)
        except ValueError as exc:
            raise CredentialsError(f"connection {conn.conn_id!r}: keyfile_dict is not valid JSON",
                                   hint="paste the service-account key file's content") from exc
    if not info and extra.get("key_path"):
        # read here: a gateway on another host has no access to this worker's files
        try:
            info = json.loads(Path(extra["key_path"]).expanduser().read_text())
        except (OSError, ValueError) as exc:
            raise CredentialsError(f"connection {conn.conn_id!r}: cannot read the key file {extra['key_path']}: "
                                   f"{exc}", hint="point key_path at a service-account JSON key") from exc
    return _prune({"service_account_info": info or None, "project": extra.get("project"),
                   "endpoint": extra.get("endpoint"), "anonymous": _flag(extra.get("anonymous")) or None})


def wasb_source(conn: Connection, key: str) -> CredentialSource:
    """The ``az`` entry of a ``wasb`` connection: through the microsoft-azure provider's hook where it
    is installed (:func:`provider_wasb_source`), else from the connection's fields
    (:func:`fields_wasb_source`)."""
    return provider_wasb_source(conn, key) or fields_wasb_source(conn, key)


def provider_wasb_source(conn: Connection, key: str) -> CredentialSource | None:
    """The ``az`` entry as the microsoft-azure provider's ``WasbHook`` resolves the connection: the
    account URL and credential of the client it builds. An account key (also from a connection
    string) or a SAS token goes to the gateways as it is; an Entra ID credential (``tenant_id`` with a
    client secret, or ``DefaultAzureCredential``: managed or workload identity) stays here and the
    gateways get its access tokens, renewed here (:class:`AzureTokenSource`). None where the provider
    is not installed."""
    try:
        from airflow.providers.microsoft.azure.hooks.wasb import WasbHook
    except ImportError:
        return None
    try:
        client = WasbHook(wasb_conn_id=conn.conn_id).get_conn()
        url = urlsplit(client.url)
        base = {"account_url": f"{url.scheme}://{url.netloc}{url.path}".rstrip("/")}
        credential = client.credential
        if getattr(credential, "account_key", None):
            source, kind = CredentialSource(key, {**base, "account_key": credential.account_key}), "an account key"
        elif getattr(credential, "signature", None) or url.query:
            sas = getattr(credential, "signature", None) or url.query
            source, kind = CredentialSource(key, {**base, "sas_token": sas}), "a SAS token"
        elif hasattr(credential, "get_token"):
            source, kind = AzureTokenSource(key, credential, base), f"Entra ID tokens of {type(credential).__name__}"
            source.current()  # an identity that yields no token fails here, before any gateway
        else:
            raise CredentialsError("it resolved no credential")
    except Exception as exc:  # noqa: BLE001 - the provider, azure-core and azure-identity raise many classes
        raise CredentialsError(f"connection {conn.conn_id!r}: the microsoft-azure provider's hook found no usable "
                               f"credentials: {exc}", hint="check the connection with a task of the microsoft-azure "
                                                            "provider, e.g. WasbPrefixSensor") from exc
    log.info("connection %r: %s for %s, as the microsoft-azure provider's WasbHook resolves it",
             conn.conn_id, kind, key)
    return source


def fields_wasb_source(conn: Connection, key: str) -> CredentialSource:
    """The ``az`` entry from a ``wasb`` connection's fields."""
    return CredentialSource(key, wasb_entry(conn))


def wasb_entry(conn: Connection) -> dict:
    """An ``az`` credentials entry from a ``wasb`` connection's fields."""
    extra = _extra(conn, prefix="extra__wasb__")
    if extra.get("connection_string"):
        return {"connection_string": extra["connection_string"]}
    if extra.get("tenant_id") or extra.get("managed_identity_client_id"):
        raise CredentialsError(f"connection {conn.conn_id!r}: Entra ID (tenant_id / managed identity) logins "
                               "need the microsoft-azure provider's hook",
                               hint="install apache-airflow-providers-microsoft-azure, or use a connection string, "
                                    "an account key or a SAS token")
    account_url = (conn.host or (f"https://{conn.login}.blob.core.windows.net" if conn.login else "")).rstrip("/")
    sas = extra.get("sas_token")
    if sas:
        if sas.startswith("http"):  # a full SAS URL, as the azure provider accepts
            account_url, _, sas = sas.partition("?")
        if not account_url:
            raise CredentialsError(f"connection {conn.conn_id!r} has a SAS token but no account",
                                   hint="set login (account name) or host (account URL)")
        return {"account_url": account_url, "sas_token": sas}
    key = conn.password or extra.get("shared_access_key") or extra.get("account_key")
    if not (account_url and key):
        raise CredentialsError(f"connection {conn.conn_id!r} has no usable Azure credentials",
                               hint="set extra connection_string, or login=account + password=key, or extra sas_token")
    return {"account_url": account_url, "account_key": key}


def _extra(conn: Connection, prefix: str = "") -> dict:
    """The connection's extra as a dict without empty values; ``extra__TYPE__name`` keys (older UI
    forms) read as ``name``. Airflow would log bad JSON and carry on with ``{}``: we refuse it."""
    if conn.extra:
        try:
            json.loads(conn.extra)
        except ValueError as exc:
            raise CredentialsError(f"the extra of connection {conn.conn_id!r} is not valid JSON",
                                   hint="fix it in Admin > Connections or in its AIRFLOW_CONN_ variable") from exc
    extra = conn.extra_dejson  # also masks the secrets in it from task logs
    return {(k[len(prefix):] if prefix and k.startswith(prefix) else k): v
            for k, v in extra.items() if v not in ("", None)}


def _flag(value: Any) -> bool:
    """A boolean extra, which URI-form connections carry as text."""
    return value.strip().lower() in ("1", "true", "yes", "on") if isinstance(value, str) else bool(value)


def _json_field(conn: Connection, extra: dict, name: str) -> dict:
    """A JSON-object extra, which URI-form connections carry as text."""
    value = extra.get(name) or {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise CredentialsError(f"connection {conn.conn_id!r}: {name} is not valid JSON") from exc
    if not isinstance(value, dict):
        raise CredentialsError(f"connection {conn.conn_id!r}: {name} must be a JSON object")
    return value


def _service(extra: dict, service: str) -> dict:
    return (extra.get("service_config") or {}).get(service) or {}


def _prune(d: dict) -> dict:
    return {k: v for k, v in d.items() if v not in (None, "")}
