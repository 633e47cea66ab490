"""Connection strings of the original product: every provider form, strict errors, quoting, redaction."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.byo.connection import (
    ArtifactoryConnection,
    AwsS3Connection,
    AzureStorageConnection,
    ConnectionString,
    ConnectionStringError,
    LocalConnection,
    MinioConnection,
    connection_from_pairs,
    parse_connection_string,
)
from core.errors import InvalidInput

AZURE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
SECRET = "S3cr3t-VALUE-xyzzy"


# ---- the forms of the seed documents (catalog-concepts.md) and the issue ---------------------------


def test_aws_s3_form() -> None:
    conn = parse_connection_string(
        "provider=aws-s3;bucket=catalog-example;region=us-east-2;access_key=AKIAEXAMPLE;secret_key=wJal/rXU+tn=="
    )
    assert conn == AwsS3Connection(
        bucket="catalog-example", region="us-east-2", access_key="AKIAEXAMPLE", secret_key="wJal/rXU+tn=="
    )


def test_aws_s3_with_session_token_and_without_keys() -> None:
    conn = parse_connection_string(
        "provider=aws-s3;bucket=bkt;region=eu-west-1;access_key=A;secret_key=B;session_token=T"
    )
    assert isinstance(conn, AwsS3Connection) and conn.session_token == "T"
    bare = parse_connection_string("provider=aws-s3;bucket=bkt;region=eu-west-1")
    assert bare == AwsS3Connection(bucket="bkt", region="eu-west-1")
    env = parse_connection_string("provider=aws-s3;bucket=bkt;region=eu-west-1;use_environment_authentication=TRUE")
    assert isinstance(env, AwsS3Connection) and env.use_environment_authentication is True


def test_azure_form() -> None:
    conn = parse_connection_string(
        f"provider=azure-storage-account;storage_account_name=acme;container_name=vms;storage_account_key={AZURE_KEY}"
    )
    assert conn == AzureStorageConnection(
        storage_account_name="acme", container_name="vms", storage_account_key=AZURE_KEY
    )
    assert conn.account_url == "https://acme.blob.core.windows.net"
    local = parse_connection_string(
        "provider=azure-storage-account;storage_account_name=devstoreaccount1;container_name=vms;"
        f"storage_account_key={AZURE_KEY};endpoint=http://127.0.0.1:10000/devstoreaccount1"
    )
    assert isinstance(local, AzureStorageConnection)
    assert local.account_url == "http://127.0.0.1:10000/devstoreaccount1"


def test_artifactory_forms() -> None:
    conn = parse_connection_string("provider=artifactory;url=https://acme.jfrog.io;repo=vms-local;access_key=AKCp8")
    assert conn == ArtifactoryConnection(url="https://acme.jfrog.io", repo="vms-local", access_key="AKCp8")
    assert isinstance(conn, ArtifactoryConnection)
    assert conn.base_url == "https://acme.jfrog.io/artifactory"
    basic = parse_connection_string(
        "provider=artifactory;url=http://art.lan/artifactory/;port=8081;repo=r;username=ci;password=pw"
    )
    assert isinstance(basic, ArtifactoryConnection)
    assert basic.base_url == "http://art.lan:8081/artifactory"
    assert (basic.username, basic.password) == ("ci", "pw")
    token = parse_connection_string("provider=artifactory;url=https://a.io;repo=r;access_token=eyJ")
    assert isinstance(token, ArtifactoryConnection) and token.access_token == "eyJ"


def test_minio_form() -> None:
    conn = parse_connection_string(
        "provider=minio;endpoint=minio.lan:9000;bucket=vms;access_key=ci;secret_key=pw;use_ssl=false"
    )
    assert conn == MinioConnection(
        endpoint="minio.lan:9000", bucket="vms", access_key="ci", secret_key="pw", use_ssl=False
    )
    assert isinstance(conn, MinioConnection)
    assert conn.url == "http://minio.lan:9000"
    secure = parse_connection_string("provider=minio;endpoint=minio.lan;bucket=vms;access_key=a;secret_key=b")
    assert isinstance(secure, MinioConnection) and secure.url == "https://minio.lan"
    scheme = parse_connection_string("provider=minio;endpoint=http://10.0.0.5:9000;bucket=vms;ignore_cert=true")
    assert isinstance(scheme, MinioConnection) and scheme.url == "http://10.0.0.5:9000" and scheme.ignore_cert


def test_local_forms() -> None:
    assert parse_connection_string("provider=local;catalog_path=/srv/catalog") == LocalConnection(
        catalog_path="/srv/catalog"
    )
    # the original product's own name for it
    assert parse_connection_string("provider=local-storage;catalog_path=/srv/catalog") == LocalConnection(
        catalog_path="/srv/catalog"
    )


def test_case_whitespace_and_trailing_separator() -> None:
    conn = parse_connection_string("  PROVIDER = Minio ;\n  Endpoint=m:9000 ; BUCKET = vms ;\tUse_SSL=False ;  ")
    assert conn == MinioConnection(endpoint="m:9000", bucket="vms", use_ssl=False)


# ---- quoting and escaping --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "value"),
    [
        (r"a\;b", "a;b"),
        (r"a\=b", "a=b"),
        ("a=b==", "a=b=="),  # a later '=' belongs to the value: base64 needs no escaping
        (r"a\\b", "a\\b"),
        (r"a\"b", 'a"b'),
        ('"a;b=c"', "a;b=c"),
        (r'"say \"hi\"; \\o/"', 'say "hi"; \\o/'),
        ('"  padded  "', "  padded  "),
        (r'"\;\="', ";="),
        ('  "quoted"  ', "quoted"),
        ("  bare value  ", "bare value"),
    ],
)
def test_values_may_hold_separators_when_quoted_or_escaped(written: str, value: str) -> None:
    conn = parse_connection_string(
        f"provider=minio;endpoint=m;bucket=vms;access_key=k;secret_key={written};use_ssl=true"
    )
    assert isinstance(conn, MinioConnection)
    assert conn.secret_key == value
    assert parse_connection_string(conn.format()) == conn


def test_format_is_canonical_and_quotes_only_when_needed() -> None:
    conn = MinioConnection(endpoint="m:9000", bucket="vms", access_key="k", secret_key='x;y"z\\', use_ssl=False)
    assert (
        conn.format() == r'provider=minio;endpoint=m:9000;bucket=vms;access_key=k;secret_key="x;y\"z\\";use_ssl=false'
    )
    assert LocalConnection(catalog_path="/a b/c=d").format() == "provider=local;catalog_path=/a b/c=d"
    assert LocalConnection(catalog_path=" x").format() == 'provider=local;catalog_path=" x"'


# ---- strictness ------------------------------------------------------------------------------------

BAD = [
    ("", "empty"),
    ("   ", "empty"),
    (";", "entry 1 is empty"),
    ("provider=local;;catalog_path=/x", "entry 2 is empty"),
    ("provider=local;catalog_path=/x;;", "entry 3 is empty"),
    ("bucket=vms;region=r", "no provider="),
    ("provider=aws-s4;bucket=vms;region=r", "did you mean 'aws-s3'"),
    ("provider=dropbox;bucket=b", "unknown provider 'dropbox'"),
    ("provider=aws-s3;bukcet=b;region=us-east-1", "unknown key bukcet for provider aws-s3; did you mean 'bucket'?"),
    ("provider=aws-s3;bucket=bkt;region=us-east-1;catalog_path=/x", "unknown key catalog_path"),
    ("provider=aws-s3", "missing bucket, region for provider aws-s3"),
    ("provider=azure-storage-account;storage_account_name=acme", "missing container_name, storage_account_key"),
    ("provider=local;catalog_path=/a;Catalog_Path=/b", "key catalog_path is given twice (entries 2 and 3)"),
    ("provider=local;provider=local;catalog_path=/a", "key provider is given twice"),
    ("provider=local;catalog_path=", "catalog_path has an empty value"),
    ('provider=local;catalog_path=""', "catalog_path has an empty value"),
    ("provider=local;catalog_path=/x;stray", "entry 3 is not key=value (it has no '=')"),
    ("provider=local;=x", "entry 2 has no key before '='"),
    ("provider=local;cat path=/x", "entry 2 has an invalid key 'cat path'"),
    ("provider=local;9lives=/x", "invalid key"),
    ('provider=local;catalog_path="/x', "has no closing quote"),
    ('provider=local;catalog_path="/x" y', "unexpected text after the closing quote"),
    ('provider=local;catalog_path=/x"y', 'must be escaped as \\"'),
    (r"provider=local;catalog_path=/x\y", "bad escape"),
    ("provider=local;catalog_path=/x\\", "bad escape"),
    ('provider=local;catalog_path="/x\ny"', "control character"),
    ("provider=minio;endpoint=m;bucket=vms;use_ssl=yes", "use_ssl must be true or false, not 'yes'"),
    ("provider=minio;endpoint=https://m;bucket=vms;use_ssl=false", "endpoint says https but use_ssl is false"),
    ("provider=minio;endpoint=m/path;bucket=vms", "must be only a host and port"),
    ("provider=minio;endpoint=ftp://m;bucket=vms", "must be host[:port] or http(s)://host[:port]"),
    ("provider=minio;endpoint=m:99999;bucket=vms", "invalid port"),
    ("provider=aws-s3;bucket=bkt;region=us-east-1;access_key=a", "access_key and secret_key go together"),
    ("provider=aws-s3;bucket=bkt;region=us-east-1;session_token=t", "session_token needs access_key"),
    (
        "provider=aws-s3;bucket=bkt;region=us-east-1;access_key=a;secret_key=s;use_environment_authentication=true",
        "cannot be combined",
    ),
    ("provider=aws-s3;bucket=b;region=us-east-1", "bucket 'b' is not a bucket name"),
    ("provider=aws-s3;bucket=bkt;region=Mars One", "is not an AWS region name"),
    ("provider=azure-storage-account;storage_account_name=ACME;container_name=vms;storage_account_key=AA==", "3-24"),
    ("provider=azure-storage-account;storage_account_name=acme;container_name=a--b;storage_account_key=AA==", "3-63"),
    ("provider=artifactory;url=https://a.io;repo=r", "exactly one of access_key, access_token, or username"),
    ("provider=artifactory;url=https://a.io;repo=r;access_key=k;access_token=t", "exactly one of"),
    ("provider=artifactory;url=https://a.io;repo=r;username=u", "username and password go together"),
    ("provider=artifactory;url=a.io;repo=r;access_key=k", "must be an http:// or https:// URL"),
    ("provider=artifactory;url=https://a.io?x=1;repo=r;access_key=k", "must not have a query"),
    ("provider=artifactory;url=https://a.io:8081;port=8082;repo=r;access_key=k", "url has port 8081 but port is 8082"),
    ("provider=artifactory;url=https://a.io;port=http;repo=r;access_key=k", "port must be a whole number"),
    ("provider=artifactory;url=https://a.io;port=0;repo=r;access_key=k", "port must be between 1 and 65535"),
    ("provider=artifactory;url=https://a.io;repo=no/slash;access_key=k", "not an Artifactory repository key"),
    ("provider=local;catalog_path=" + "x" * 20000, "longer than"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_connection_strings_are_refused_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ConnectionStringError) as caught:
        parse_connection_string(text)
    assert message in caught.value.message
    assert "\n" not in caught.value.message
    assert isinstance(caught.value, InvalidInput) and caught.value.status == 400


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ConnectionStringError, match="go together"):
        AwsS3Connection(bucket="bkt", region="us-east-1", access_key="a")
    with pytest.raises(ConnectionStringError, match="non-empty"):
        LocalConnection(catalog_path="")


def test_pairs_from_a_pdfile_get_the_same_checks() -> None:
    pairs = [("NAME", "aws-s3"), ("BUCKET", "catalog-example"), ("REGION", "us-east-2"), ("ACCESS_KEY", "AK")]
    conn = connection_from_pairs([*pairs, ("SECRET_KEY", "a;b=c")])
    assert conn == AwsS3Connection(bucket="catalog-example", region="us-east-2", access_key="AK", secret_key="a;b=c")
    with pytest.raises(ConnectionStringError, match="access_key and secret_key go together"):
        connection_from_pairs(pairs)
    with pytest.raises(ConnectionStringError, match="did you mean 'bucket'"):
        connection_from_pairs([("name", "aws-s3"), ("buckt", "b"), ("region", "us-east-1")])
    with pytest.raises(ConnectionStringError, match="given twice"):
        connection_from_pairs([("provider", "local"), ("name", "local"), ("catalog_path", "/x")])
    with pytest.raises(ConnectionStringError, match="no provider settings"):
        connection_from_pairs([])
    with pytest.raises(ConnectionStringError) as caught:
        connection_from_pairs([*pairs, ("SECRET_KEY", SECRET + "\x00tail")])
    assert SECRET not in caught.value.message


# ---- secrets are never shown -----------------------------------------------------------------------


def _all_parsed() -> list[ConnectionString]:
    return [
        parse_connection_string(
            f"provider=aws-s3;bucket=bkt;region=r1;access_key={SECRET}1;secret_key={SECRET}2;session_token={SECRET}3"
        ),
        parse_connection_string(f"provider=minio;endpoint=m;bucket=bkt;access_key={SECRET}1;secret_key={SECRET}2"),
        parse_connection_string(
            f"provider=azure-storage-account;storage_account_name=acme;container_name=vms;storage_account_key={AZURE_KEY}"
        ),
        parse_connection_string(f"provider=artifactory;url=https://a.io;repo=r;access_key={SECRET}1"),
        parse_connection_string(f"provider=artifactory;url=https://a.io;repo=r;access_token={SECRET}1"),
        parse_connection_string(f"provider=artifactory;url=https://a.io;repo=r;username=ci;password={SECRET}1"),
    ]


@pytest.mark.parametrize("conn", _all_parsed(), ids=lambda c: c.provider)
def test_repr_and_str_redact_secrets(conn: ConnectionString) -> None:
    for shown in (repr(conn), str(conn), f"{conn}", conn.description, repr([conn])):
        assert SECRET not in shown and AZURE_KEY not in shown
        assert AZURE_KEY[:12] not in shown
    assert "***" in str(conn) and "***" in repr(conn)
    assert all(s in conn.format() for s in conn.secrets())  # format() is the full, secret-bearing form
    assert conn.secrets()


LEAKY = [
    # a secret with an unescaped ';' splits into entries that look like keys
    f"provider=aws-s3;bucket=bkt;region=r1;access_key=k;secret_key={SECRET};{SECRET}",
    f"provider=aws-s3;bucket=bkt;region=r1;access_key=k;secret_key=x;{SECRET}=y",
    f"provider=aws-s3;bucket=bkt;region=r1;access_key=k;secret_key=x;{SECRET}",
    f"provider=aws-s3;bucket=bkt;region=r1;access_key=k;secret_key=x;a{SECRET} b=y",
    f"provider=aws-s3;bucket=bkt;region=r1;access_key=k;secret_key=x;abc=def;{SECRET}",
    f"provider=aws-s3;bucket=bkt;region=r1;access_key=k;secret_key=x;abc=def;{SECRET}=1",
    f"provider=minio;endpoint=m;bucket=bkt;access_key=k;secret_key=x;use_ssl=true;{SECRET}",
    f"provider=artifactory;url=https://a.io;repo=r;password=x;{SECRET}=1;username=u",
    # a secret with an unescaped quote or backslash, or in a duplicate
    f'provider=aws-s3;bucket=bkt;region=r1;access_key=k;secret_key={SECRET}"',
    f'provider=aws-s3;bucket=bkt;region=r1;access_key=k;secret_key="{SECRET}',
    f'provider=aws-s3;bucket=bkt;region=r1;access_key=k;secret_key="{SECRET}" junk',
    f"provider=aws-s3;bucket=bkt;region=r1;access_key=k;secret_key={SECRET}\\x",
    f"provider=aws-s3;bucket=bkt;region=r1;access_key=k;secret_key={SECRET};secret_key={SECRET}",
    f"provider=aws-s3;bucket=bkt;region=r1;access_key={SECRET}",
    f'provider=local;catalog_path=/x;password="{SECRET}\n"',
    # an Azure key that is not base64; credentials inside a URL
    f"provider=azure-storage-account;storage_account_name=acme;container_name=vms;storage_account_key={SECRET}!",
    f"provider=artifactory;url=https://ci:{SECRET}@a.io;repo=r;access_key=k",
    f"provider=minio;endpoint=http://ci:{SECRET}@m;bucket=bkt",
]


@pytest.mark.parametrize("text", LEAKY)
def test_errors_never_quote_a_secret(text: str) -> None:
    with pytest.raises(ConnectionStringError) as caught:
        parse_connection_string(text)
    for shown in (caught.value.message, str(caught.value), repr(caught.value)):
        assert SECRET not in shown
        assert SECRET[:8] not in shown


# ---- properties ------------------------------------------------------------------------------------

_pieces = st.sampled_from(
    [
        ";",
        "=",
        '"',
        "\\",
        " ",
        "\n",
        "provider",
        "aws-s3",
        "minio",
        "local",
        "artifactory",
        "bucket",
        "secret_key",
        "catalog_path",
        "region",
        "use_ssl",
        "true",
        "x",
        "é",
        "\x00",
        "\ud800",
    ]
)
_connectionish = st.lists(st.one_of(_pieces, st.text(max_size=4)), max_size=30).map("".join)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), _connectionish))
def test_any_text_parses_or_raises_connection_string_error(text: str) -> None:
    try:
        conn = parse_connection_string(text)
    except ConnectionStringError as exc:
        assert exc.message and "\n" not in exc.message
    else:
        assert parse_connection_string(conn.format()) == conn


_value = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=40)
_secret = _value.map(lambda v: "SECRET-" + v)
_bucket = st.from_regex(r"[a-z0-9][a-z0-9.-]{2,20}", fullmatch=True)
_region = st.from_regex(r"[a-z]{2}-[a-z]{3,8}-[1-9]", fullmatch=True)
_flags = st.none() | st.booleans()

_connections = st.one_of(
    st.builds(
        AwsS3Connection,
        bucket=_bucket,
        region=_region,
        access_key=_secret,
        secret_key=_secret,
        session_token=st.none() | _secret,
    ),
    st.builds(AwsS3Connection, bucket=_bucket, region=_region, use_environment_authentication=_flags),
    st.builds(
        MinioConnection,
        endpoint=st.from_regex(r"[a-z][a-z0-9.-]{0,20}(:[1-9][0-9]{0,3})?", fullmatch=True),
        bucket=_bucket,
        access_key=_secret,
        secret_key=_secret,
        use_ssl=_flags,
        ignore_cert=_flags,
        region=st.none() | _region,
    ),
    st.builds(
        AzureStorageConnection,
        storage_account_name=st.from_regex(r"[a-z0-9]{3,24}", fullmatch=True),
        container_name=st.from_regex(r"[a-z0-9]{3,20}", fullmatch=True),
        storage_account_key=st.binary(min_size=1, max_size=64).map(
            lambda b: __import__("base64").b64encode(b).decode()
        ),
        endpoint=st.none() | st.just("http://127.0.0.1:10000/devstoreaccount1"),
    ),
    st.builds(
        ArtifactoryConnection,
        url=st.sampled_from(["https://acme.jfrog.io", "http://10.0.0.1:8081/artifactory", "https://a.io/ctx/"]),
        repo=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
        access_key=_secret,
    ),
    st.builds(
        ArtifactoryConnection,
        url=st.just("https://acme.jfrog.io"),
        repo=st.just("r"),
        username=_value,
        password=_secret,
    ),
    st.builds(LocalConnection, catalog_path=_value),
)


@settings(max_examples=150, deadline=None)
@given(_connections)
def test_format_then_parse_is_identity_and_secrets_stay_hidden(conn: ConnectionString) -> None:
    assert parse_connection_string(conn.format()) == conn
    redacted = str(conn) + repr(conn)
    for secret in conn.secrets():
        assert secret not in redacted
    # the redacted text is itself a valid connection string only in shape: its secrets are '***'
    assert re.search(r"=\*\*\*(;|$)", str(conn)) or not conn.secrets()
