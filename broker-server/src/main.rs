//! The webhook broker as a standalone server: binds a port, serves the v1
//! API over an in-memory broker (or a durable one with `--data-dir`, or
//! one on Redis with `--redis-url`), and the TCP line protocol on a second
//! port with `--tcp-listen`, and drains deliveries on SIGTERM/Ctrl-C.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use broker_core::{Broker, IdempotencyLimits, Limits, MemoryStore, Retention, Retry};
use broker_delivery::{DeliveryConfig, DestinationPolicy, WebhookNotifier};
use broker_http::{
    serve, Api, ApiConfig, LiveConfig, LiveHub, Metrics, Overflow, ServerConfig, UiConfig,
};
use broker_jwt::{JwtConfig, JwtVerifier};
use broker_redis::RedisStore;
use broker_store::{DiskStore, Fsync, Options};
use broker_tcp::TcpConfig;
use clap::Parser;
use tokio::net::TcpListener;

// Many small allocations per request and per delivery, across threads:
// mimalloc serves them markedly faster than the system allocator (see
// BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A webhook pub/sub broker: publishers post events on a topic once; the
/// broker pushes them over HTTP to every subscriber's endpoint.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Log format: `human` (default) or `json` (one object per line, for
    /// log pipelines). `RUST_LOG` filters either (default `info`).
    #[arg(long, env = "BROKER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,

    /// Address to listen on.
    #[arg(long, env = "BROKER_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,

    /// Also speak the TCP line protocol (AUTH, PUB, FETCH; README, "TCP
    /// protocol") on this address. Off by default. It takes its limits
    /// from `--max-body-bytes`, `--max-connections` (counted apart from
    /// HTTP's), `--header-read-timeout` (idle, and a command line),
    /// `--body-timeout` (a payload) and `--write-timeout`.
    #[arg(long, env = "BROKER_TCP_LISTEN")]
    tcp_listen: Option<SocketAddr>,

    /// Instead of serving: ask the server on the `--listen` port of this
    /// host for `/healthz` and exit 0 if it answers 200 (for container
    /// health checks, with no curl in the image).
    #[arg(long)]
    health_check: bool,

    /// Bearer token required for management calls (register, deregister,
    /// list, detail); it may also listen live on any topic. Without it,
    /// management is open to anyone who can reach the port.
    #[arg(long, env = "BROKER_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,

    /// Accept JWTs signed HS256/384/512 with this secret (at least 32
    /// bytes, taken as written). A JWT's `scope` says what it may do
    /// (README, "Authentication"); any JWT key closes management to all
    /// but the admin token and JWTs with the `admin` scope.
    #[arg(long, env = "BROKER_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,

    /// Accept JWTs signed with the key of this PEM public key file: RSA
    /// (RS256/384/512, PS256/384/512), EC P-256 (ES256) or P-384 (ES384),
    /// Ed25519 (EdDSA). Read again on SIGHUP.
    #[arg(long, env = "BROKER_JWT_PUBLIC_KEY", value_name = "FILE")]
    jwt_public_key: Option<PathBuf>,

    /// Accept JWTs signed with the keys of this JWKS document (a file; the
    /// broker fetches nothing), found by `kid`. Read again on SIGHUP, for
    /// key rotation: a bad file then keeps the keys in use.
    #[arg(long, env = "BROKER_JWT_JWKS", value_name = "FILE")]
    jwt_jwks: Option<PathBuf>,

    /// The `iss` every JWT must carry.
    #[arg(long, env = "BROKER_JWT_ISSUER")]
    jwt_issuer: Option<String>,

    /// The `aud` every JWT must name.
    #[arg(long, env = "BROKER_JWT_AUDIENCE")]
    jwt_audience: Option<String>,

    /// Clock skew allowed on a JWT's `exp` and `nbf`.
    #[arg(long, env = "BROKER_JWT_LEEWAY", default_value = "30s", value_parser = duration)]
    jwt_leeway: Duration,

    /// The longest lifetime of a token minted with `POST /v1/tokens`.
    /// Minted tokens are signed with `--jwt-secret` when set; otherwise
    /// with a key the broker makes and keeps (`token.key` in the data
    /// dir, a shared key in Redis, or memory).
    #[arg(long, env = "BROKER_MAX_TOKEN_TTL", default_value = "30d", value_parser = duration)]
    max_token_ttl: Duration,

    /// Serve no console at `/ui`.
    #[arg(long, env = "BROKER_NO_UI")]
    no_ui: bool,

    /// Who may show the console in a frame: CSP `frame-ancestors` sources
    /// (`https://app.example.com`, `'self'`), for a tenant portal inside
    /// the customer's own app. Default `'none'`.
    #[arg(long, env = "BROKER_UI_FRAME_ANCESTORS", default_value = "'none'")]
    ui_frame_ancestors: String,

    /// Largest accepted message body, in bytes.
    #[arg(long, env = "BROKER_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    max_body_bytes: usize,

    /// Time for subscribers to catch up on shutdown before exiting
    /// (`10s`, `500ms`, `1m`; a bare number is seconds). What is left stays
    /// in the log (delivered after a restart with `--data-dir`).
    #[arg(long, env = "BROKER_DRAIN_TIMEOUT", default_value = "10s", value_parser = duration)]
    drain_timeout: Duration,

    /// Requests in flight per subscriber.
    #[arg(long, env = "BROKER_MAX_IN_FLIGHT", default_value_t = 8)]
    max_in_flight: usize,

    /// Time to connect to a subscriber.
    #[arg(long, env = "BROKER_CONNECT_TIMEOUT", default_value = "2s", value_parser = duration)]
    connect_timeout: Duration,

    /// A subscriber every attempt of which has failed for this long is
    /// disabled (one whose endpoint answers `410 Gone` at once);
    /// `POST …/subscribers/{id}/enable` resumes it.
    #[arg(long, env = "BROKER_DISABLE_AFTER", default_value = "5d", value_parser = duration)]
    disable_after: Duration,

    /// How long a subscriber's circuit stays open after 5 failed attempts
    /// in a row: nothing is attempted meanwhile, then one probe at a time
    /// (each failed probe doubles it, up to 5 min).
    #[arg(long, env = "BROKER_CIRCUIT_OPEN_FOR", default_value = "30s", value_parser = duration)]
    circuit_open_for: Duration,

    /// Publishes are paced (answered later, never refused) while the
    /// process uses 85 % of its cores and the subscribers that are
    /// delivering are more than this many messages behind as a whole (each
    /// counting at most 1,024); 0 never paces.
    #[arg(long, env = "BROKER_PACE_AFTER", default_value_t = 4_096)]
    pace_after: u64,

    /// The longest a publish is paced.
    #[arg(long, env = "BROKER_PACE_AT_MOST", default_value = "100ms", value_parser = duration)]
    pace_at_most: Duration,

    /// Time for one whole delivery attempt.
    #[arg(long, env = "BROKER_REQUEST_TIMEOUT", default_value = "10s", value_parser = duration)]
    request_timeout: Duration,

    /// Refuse deliveries to loopback and private addresses too (for
    /// multi-tenant deployments). Link-local and metadata addresses are
    /// always refused.
    #[arg(long, env = "BROKER_DENY_PRIVATE_DESTINATIONS")]
    deny_private_destinations: bool,

    /// Deliver to loopback IP literals only, resolving no names (for
    /// tests that register arbitrary URLs).
    #[arg(long, env = "BROKER_LOOPBACK_ONLY_DESTINATIONS")]
    loopback_only_destinations: bool,

    /// Time a client has to send a request's headers (and its first byte);
    /// also how long an idle keep-alive connection is kept.
    #[arg(long, env = "BROKER_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = duration)]
    header_read_timeout: Duration,

    /// Time a client has to send a request body.
    #[arg(long, env = "BROKER_BODY_TIMEOUT", default_value = "30s", value_parser = duration)]
    body_timeout: Duration,

    /// Client connections served at once; more wait in the listen backlog.
    #[arg(long, env = "BROKER_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,

    /// Topics registered at once.
    #[arg(long, env = "BROKER_MAX_TOPICS", default_value_t = Limits::default().max_topics)]
    max_topics: usize,

    /// Publishers on one topic.
    #[arg(long, env = "BROKER_MAX_PUBLISHERS_PER_TOPIC", default_value_t = Limits::default().max_publishers_per_topic)]
    max_publishers_per_topic: usize,

    /// Subscribers on one topic.
    #[arg(long, env = "BROKER_MAX_SUBSCRIBERS_PER_TOPIC", default_value_t = Limits::default().max_subscribers_per_topic)]
    max_subscribers_per_topic: usize,

    /// Listeners (live-listening credentials) on one topic.
    #[arg(long, env = "BROKER_MAX_LISTENERS_PER_TOPIC", default_value_t = Limits::default().max_listeners_per_topic)]
    max_listeners_per_topic: usize,

    /// Most messages `last_n` replays from the log to a live listener; 0
    /// replays none. (`Last-Event-ID` replays everything retained after
    /// that id.)
    #[arg(long, env = "BROKER_REPLAY_MESSAGES", default_value_t = Limits::default().replay_messages)]
    replay_messages: usize,

    /// Most payload bytes a replaying live connection reads from the log
    /// at once (its memory while it catches up).
    #[arg(long, env = "BROKER_REPLAY_BYTES", default_value_t = Limits::default().replay_bytes)]
    replay_bytes: usize,

    /// Keep registrations and every topic's log in this directory
    /// (created, mode 0700) so that they survive restarts and crashes.
    /// Without it, everything is in memory.
    #[arg(long, env = "BROKER_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// Keep registrations, topic logs, cursors, retries and dead letters
    /// in this Redis (6.2 or later) instead: `redis://[user:password@]host:port[/db]`,
    /// `rediss://…` for TLS. Several broker processes may share one (README,
    /// "Redis (several replicas)"). Not with `--data-dir`.
    #[arg(
        long,
        env = "BROKER_REDIS_URL",
        conflicts_with = "data_dir",
        hide_env_values = true
    )]
    redis_url: Option<String>,

    /// With `--redis-url`: how long a replica's lease on a subscriber's
    /// deliveries lasts unrenewed. Replicas of a broker killed outright
    /// take its subscribers over about this long after.
    #[arg(long, env = "BROKER_LEASE_TTL", default_value = "15s", value_parser = duration)]
    lease_ttl: Duration,

    /// With `--data-dir`: when published messages are fsynced. `always`
    /// answers a publish once it is on disk (concurrent publishes share an
    /// fsync); a duration (`100ms`) fsyncs that often in the background;
    /// `never` leaves it to the operating system.
    #[arg(long, env = "BROKER_FSYNC", default_value = "always", value_parser = fsync)]
    fsync: Fsync,

    /// How long each topic's messages are kept (`24h`, `7d`, `30m`).
    #[arg(long, env = "BROKER_RETENTION", default_value = "24h", value_parser = duration)]
    retention: Duration,

    /// Most bytes of log kept per topic (`1GiB`, `500MiB`, or bytes); the
    /// oldest go first, a whole segment at a time with a data dir.
    #[arg(long, env = "BROKER_RETENTION_BYTES", default_value = "1GiB", value_parser = bytes)]
    retention_bytes: u64,

    /// How long a publish's `Idempotency-Key` is remembered on its topic:
    /// the same key again within it appends nothing and is answered as
    /// the first was (`24h`, `1h`; `0s` turns keys off).
    #[arg(long, env = "BROKER_IDEMPOTENCY_WINDOW", default_value = "24h", value_parser = duration)]
    idempotency_window: Duration,

    /// Most idempotency keys remembered (in memory or with `--data-dir`:
    /// over all topics; on Redis: per topic); past it the oldest go first.
    #[arg(long, env = "BROKER_IDEMPOTENCY_KEYS", default_value_t = IdempotencyLimits::default().max_keys)]
    idempotency_keys: usize,

    /// Delivery attempts kept per subscriber in its attempt log
    /// (`GET …/subscribers/{id}/attempts`), the oldest dropped first, none
    /// older than the topic's retention; 0 keeps none.
    #[arg(long, env = "BROKER_ATTEMPT_LOG", default_value_t = Limits::default().attempt_log)]
    attempt_log: usize,

    /// Export spans (a publish, each delivery attempt) over OTLP/HTTP to
    /// this collector (`POST <URL>/v1/traces`, protobuf), from a bounded
    /// queue: an unreachable collector slows nothing, dropped spans are
    /// counted in `/metrics`. Off by default.
    #[arg(long, env = "BROKER_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,

    /// Most message bytes held in memory (payloads and 160 bytes a
    /// message): the topic logs (with `--data-dir`, their tail caches),
    /// which evict their oldest messages past it, and what deliveries hold,
    /// at most half of it (see README, "One memory budget").
    #[arg(long, env = "BROKER_MAX_MEMORY_BYTES", default_value = "512MiB", value_parser = bytes)]
    max_memory_bytes: u64,

    /// The retry policy of a subscriber that registers without one: `none`
    /// (one attempt), `standard` (the Standard Webhooks schedule: 5s, 5m,
    /// 30m, 2h, 5h, 10h, 10h) or waits separated by commas (`1s,10s,1m`).
    /// Default: `none` in memory, `standard` with `--data-dir` or
    /// `--redis-url`.
    #[arg(long, env = "BROKER_DEFAULT_RETRY", value_parser = retry)]
    default_retry: Option<Retry>,

    /// After a subscriber's secret is rotated, how long deliveries carry a
    /// signature with the old secret too.
    #[arg(long, env = "BROKER_SECRET_OVERLAP", default_value = "24h", value_parser = duration)]
    secret_overlap: Duration,

    /// With `--data-dir`: size at which a topic's log starts a new segment
    /// file.
    #[arg(long, env = "BROKER_SEGMENT_BYTES", default_value = "64MiB", value_parser = bytes)]
    segment_bytes: u64,

    /// Let anyone listen live (SSE, WebSocket) without a token.
    #[arg(long, env = "BROKER_ALLOW_ANONYMOUS_LISTENERS")]
    allow_anonymous_listeners: bool,

    /// Messages queued per live connection.
    #[arg(long, env = "BROKER_LIVE_QUEUE_CAPACITY", default_value_t = LiveConfig::default().queue_capacity)]
    live_queue_capacity: usize,

    /// What a full live queue does: `disconnect` (the client gets
    /// SLOW_CONSUMER and is closed) or `drop-oldest`.
    #[arg(long, env = "BROKER_LIVE_OVERFLOW", value_enum, default_value_t = LiveOverflow::Disconnect)]
    live_overflow: LiveOverflow,

    /// Live connections (SSE and WebSocket) at once.
    #[arg(long, env = "BROKER_MAX_LIVE_CONNECTIONS", default_value_t = LiveConfig::default().max_connections)]
    max_live_connections: usize,

    /// Heartbeat of live connections (SSE comment, WebSocket ping).
    #[arg(long, env = "BROKER_LIVE_HEARTBEAT", default_value = "15s", value_parser = duration)]
    live_heartbeat: Duration,

    /// Time a write to a client may make no progress before the connection
    /// is dropped.
    #[arg(long, env = "BROKER_WRITE_TIMEOUT", default_value = "30s", value_parser = duration)]
    write_timeout: Duration,

    /// Length of a subscriber URL, in bytes.
    #[arg(long, env = "BROKER_MAX_URL_LENGTH", default_value_t = Limits::default().max_url_len)]
    max_url_length: usize,

    /// Custom headers on one subscriber.
    #[arg(long, env = "BROKER_MAX_SUBSCRIBER_HEADERS", default_value_t = Limits::default().max_headers)]
    max_subscriber_headers: usize,

    /// Total bytes of one subscriber's custom headers.
    #[arg(long, env = "BROKER_MAX_SUBSCRIBER_HEADER_BYTES", default_value_t = Limits::default().max_header_bytes)]
    max_subscriber_header_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LiveOverflow {
    Disconnect,
    DropOldest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// Installs the log subscriber on stderr.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A closed stderr must not take the server down: tracing would
        // report the failed write with `eprintln!`, which panics.
        .log_internal_errors(false);
    match format {
        LogFormat::Human => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// `GET /healthz` on this host's `listen` port, within 3 s.
fn health_check(listen: SocketAddr) -> ExitCode {
    use std::io::{Read, Write};
    let target = SocketAddr::from(([127, 0, 0, 1], listen.port()));
    let timeout = Duration::from_secs(3);
    let answer = std::net::TcpStream::connect_timeout(&target, timeout).and_then(|mut stream| {
        stream.set_read_timeout(Some(timeout))?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head)?;
        Ok(head)
    });
    match answer {
        Ok(head) if head.starts_with(b"HTTP/1.1 200") => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

/// Parses `always`, `never` or a duration.
fn fsync(text: &str) -> Result<Fsync, String> {
    match text.trim() {
        "always" => Ok(Fsync::Always),
        "never" => Ok(Fsync::Never),
        other => match duration(other) {
            Ok(d) if !d.is_zero() => Ok(Fsync::Every(d)),
            _ => Err(format!(
                "{other:?} is not always, never or a duration like 100ms"
            )),
        },
    }
}

/// Parses a byte size: a number of bytes, or one with `KiB`, `MiB`,
/// `GiB` (also `KB`, `MB`, `GB` as powers of 1000).
fn bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 1GiB, 500MiB or 4096"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("unknown unit {other:?}: use KiB, MiB or GiB")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses `10s`, `500ms`, `2m`, `24h`, `7d`, or a bare number of seconds.
fn duration(text: &str) -> Result<Duration, String> {
    broker_core::parse_duration(text)
}

/// Parses `none`, `standard`, or a schedule: waits separated by commas.
fn retry(text: &str) -> Result<Retry, String> {
    match text.trim() {
        "none" => Ok(Retry::Attempts(1)),
        "standard" => Ok(Retry::standard()),
        schedule => {
            let waits = schedule
                .split(',')
                .map(duration)
                .collect::<Result<Vec<_>, _>>()?;
            if waits.len() > broker_core::MAX_SCHEDULE
                || waits.iter().any(|w| *w > broker_core::MAX_WAIT)
            {
                return Err(format!(
                    "a schedule lists at most {} waits of at most 24h",
                    broker_core::MAX_SCHEDULE
                ));
            }
            Ok(Retry::Schedule(waits.into()))
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.health_check {
        return health_check(args.listen);
    }
    init_logging(args.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "could not start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "the server stopped");
            ExitCode::FAILURE
        }
    }
}

/// Whether the flags give any JWT key (then JWTs close management to all
/// but the admin token and `admin` JWTs).
fn jwt_configured(args: &Args) -> bool {
    args.jwt_secret.is_some() || args.jwt_public_key.is_some() || args.jwt_jwks.is_some()
}

/// The JWT verifier: the keys the flags give, and the key tokens are
/// minted with (`minting`, which is `--jwt-secret` when set); a bad key
/// file is an error at start.
fn jwt_verifier(args: &Args, minting: &str) -> Result<JwtVerifier, Box<dyn std::error::Error>> {
    if !jwt_configured(args) && (args.jwt_issuer.is_some() || args.jwt_audience.is_some()) {
        return Err("--jwt-issuer and --jwt-audience need a JWT key: \
                    --jwt-secret, --jwt-public-key or --jwt-jwks"
            .into());
    }
    let config = JwtConfig {
        secret: Some(minting.as_bytes().to_vec()),
        public_key: args.jwt_public_key.clone(),
        jwks: args.jwt_jwks.clone(),
        issuer: args.jwt_issuer.clone(),
        audience: args.jwt_audience.clone(),
        leeway: Some(args.jwt_leeway),
    };
    let verifier = JwtVerifier::new(config).map_err(|e| format!("JWT keys: {e}"))?;
    if jwt_configured(args) {
        tracing::info!(
            secret = args.jwt_secret.is_some(),
            file_keys = verifier.file_keys(),
            issuer = args.jwt_issuer.as_deref().unwrap_or("(any)"),
            audience = args.jwt_audience.as_deref().unwrap_or("(any)"),
            "JWT bearer tokens accepted"
        );
    }
    Ok(verifier)
}

/// The key tokens are minted with: `--jwt-secret`, or the one kept in the
/// store (made now if there is none), or a new one for this process.
async fn token_key(args: &Args, storage: &Storage) -> Result<String, Box<dyn std::error::Error>> {
    if let Some(secret) = &args.jwt_secret {
        return Ok(secret.clone());
    }
    let fresh = broker_jwt::generate_secret();
    let key = match storage {
        Storage::Memory => fresh,
        Storage::Disk(store) => {
            let path = store.dir().join(TOKEN_KEY_FILE);
            tokio::task::spawn_blocking(move || kept_key(&path, &fresh)).await??
        }
        Storage::Redis(store) => store.shared_secret("token-key", &fresh).await?,
    };
    Ok(key)
}

/// The file in the data dir that holds the key tokens are minted with.
const TOKEN_KEY_FILE: &str = "token.key";

/// The key in `path`, or `fresh` written there first (mode 0600, synced,
/// so a token minted before a crash still verifies after it).
fn kept_key(path: &std::path::Path, fresh: &str) -> std::io::Result<String> {
    use std::io::Write as _;
    let bad = |why: &str| {
        std::io::Error::other(format!(
            "{}: {why}; delete it to make a new key (tokens minted with the old one stop working)",
            path.display()
        ))
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = text.trim();
            if key.len() < broker_jwt::MIN_SECRET_BYTES {
                return Err(bad("the token key is too short"));
            }
            return Ok(key.to_owned());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(fresh.as_bytes())?;
    file.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(fresh.to_owned())
}

/// On each SIGHUP, reads the JWT key files again; a bad file keeps the
/// keys in use, and says why.
#[cfg(unix)]
fn reload_on_hangup(verifier: JwtVerifier) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let v = verifier.clone();
            match tokio::task::spawn_blocking(move || v.reload()).await {
                Ok(Ok(loaded)) => tracing::info!(
                    keys = loaded.keys,
                    skipped = loaded.skipped,
                    "JWT keys reloaded"
                ),
                Ok(Err(error)) => tracing::error!(
                    %error,
                    keys = verifier.file_keys(),
                    "JWT keys not reloaded; keeping the keys in use"
                ),
                Err(error) => tracing::error!(%error, "JWT key reload failed"),
            }
        }
    });
    Ok(())
}

#[cfg(not(unix))]
fn reload_on_hangup(_: JwtVerifier) -> std::io::Result<()> {
    Ok(())
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let ui = (!args.no_ui)
        .then(|| UiConfig::new().with_frame_ancestors(&args.ui_frame_ancestors))
        .transpose()
        .map_err(|e| format!("--ui-frame-ancestors: {e}"))?;
    let listener = TcpListener::bind(args.listen).await?;
    let tcp_listener = match args.tcp_listen {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    let notifier = WebhookNotifier::new(DeliveryConfig {
        max_in_flight: args.max_in_flight,
        connect_timeout: args.connect_timeout,
        request_timeout: args.request_timeout,
        disable_after: args.disable_after,
        circuit_open_for: args.circuit_open_for,
        pace_after: args.pace_after,
        pace_at_most: args.pace_at_most,
        lease_ttl: args.lease_ttl,
        destination_policy: DestinationPolicy {
            deny_private: args.deny_private_destinations,
            loopback_only: args.loopback_only_destinations,
        },
        ..DeliveryConfig::default()
    });
    let limits = Limits {
        max_topics: args.max_topics,
        max_publishers_per_topic: args.max_publishers_per_topic,
        max_subscribers_per_topic: args.max_subscribers_per_topic,
        max_url_len: args.max_url_length,
        max_headers: args.max_subscriber_headers,
        max_header_bytes: args.max_subscriber_header_bytes,
        max_listeners_per_topic: args.max_listeners_per_topic,
        replay_messages: args.replay_messages,
        replay_bytes: args.replay_bytes,
        attempt_log: args.attempt_log,
        ..Limits::default()
    };
    let live = LiveHub::new(LiveConfig {
        queue_capacity: args.live_queue_capacity,
        overflow: match args.live_overflow {
            LiveOverflow::Disconnect => Overflow::Disconnect,
            LiveOverflow::DropOldest => Overflow::DropOldest,
        },
        heartbeat: args.live_heartbeat,
        allow_anonymous: args.allow_anonymous_listeners,
        max_connections: args.max_live_connections,
        max_frame_bytes: args.max_body_bytes.saturating_mul(2).max(64 * 1024),
        ..LiveConfig::default()
    });
    let retention = Retention {
        age: args.retention,
        bytes_per_topic: args.retention_bytes,
    };
    let idempotency = IdempotencyLimits {
        window: args.idempotency_window,
        max_keys: if args.idempotency_window.is_zero() {
            0
        } else {
            args.idempotency_keys
        },
    };
    // Every publish goes to the webhook subscribers, then to live listeners.
    let notifiers = (notifier.clone(), live.clone());
    let memory_bytes = usize::try_from(args.max_memory_bytes).unwrap_or(usize::MAX);
    let (broker, storage) = match (&args.data_dir, &args.redis_url) {
        (None, Some(url)) => {
            let started = Instant::now();
            let options = broker_redis::Options {
                retention,
                memory_bytes,
                idempotency,
                ..broker_redis::Options::default()
            };
            // Unreachable at start: the error names the URL (password
            // hidden) and the process exits non-zero.
            let store = Arc::new(RedisStore::open(url, options).await?);
            let broker = Broker::open(notifiers, limits, store.clone()).await?;
            tracing::info!(
                url = %store.url(),
                topics = broker.topics().len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "redis store opened"
            );
            (broker, Storage::Redis(store))
        }
        (None, None) => {
            let store = MemoryStore::new(retention, memory_bytes).with_idempotency(idempotency);
            (
                Broker::open(notifiers, limits, store).await?,
                Storage::Memory,
            )
        }
        (Some(dir), _) => {
            let started = Instant::now();
            let options = Options {
                fsync: args.fsync,
                retention,
                segment_bytes: args.segment_bytes,
                memory_bytes,
                idempotency,
            };
            let dir = dir.clone();
            let store =
                tokio::task::spawn_blocking(move || DiskStore::open(dir, options)).await??;
            let store = Arc::new(store);
            let broker = Broker::open(notifiers, limits, store.clone()).await?;
            tracing::info!(
                dir = %store.dir().display(),
                fsync = ?args.fsync,
                topics = broker.topics().len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "data directory opened"
            );
            (broker, Storage::Disk(store))
        }
    };
    // Every broker verifies the tokens it mints; the flags' keys join in.
    let minting = token_key(&args, &storage).await?;
    let verifier = jwt_verifier(&args, &minting)?;
    let minter = broker_jwt::JwtMinter::new(minting.as_bytes(), args.max_token_ttl)
        .map_err(|e| format!("the token key: {e}"))?
        .with_claims(args.jwt_issuer.clone(), args.jwt_audience.clone());
    drop(minting);
    reload_on_hangup(verifier.clone())?;
    let broker = broker.with_token_verifier(verifier);
    let otlp = args
        .otlp_endpoint
        .as_deref()
        .map(|url| broker_otel::OtlpExporter::start(broker_otel::OtlpConfig::new(url)))
        .transpose()?;
    let broker = match &otlp {
        Some(exporter) => {
            tracing::info!(endpoint = ?args.otlp_endpoint, "exporting spans over OTLP/HTTP");
            broker.with_spans(exporter.clone())
        }
        None => broker,
    };
    if args.admin_token.is_none() && !jwt_configured(&args) {
        tracing::warn!(
            "no admin token set (--admin-token / BROKER_ADMIN_TOKEN): \
             anyone who can reach this port may register and deregister"
        );
    }
    let tcp_config = TcpConfig {
        admin_token: args.admin_token.clone(),
        max_payload_bytes: args.max_body_bytes,
        max_connections: args.max_connections,
        idle_timeout: args.header_read_timeout,
        line_timeout: args.header_read_timeout,
        payload_timeout: args.body_timeout,
        write_timeout: args.write_timeout,
        ..TcpConfig::default()
    };
    let guards = jwt_configured(&args);
    let api = Api::new(
        broker.clone(),
        ApiConfig {
            admin_token: args.admin_token,
            max_body_bytes: args.max_body_bytes,
            body_timeout: args.body_timeout,
            metrics: Some(Arc::new({
                let metrics = Metrics::new(&broker)
                    .with_collector(notifier.collector())
                    .with_live(&live);
                match &otlp {
                    Some(exporter) => metrics.with_collector(exporter.collector()),
                    None => metrics,
                }
            })),
            live: Some(live),
            default_retry: Some(args.default_retry.clone().unwrap_or_else(|| {
                if args.data_dir.is_some() || args.redis_url.is_some() {
                    Retry::standard()
                } else {
                    Retry::Attempts(1)
                }
            })),
            secret_overlap: args.secret_overlap,
            minter: Some(Arc::new(minter)),
            verifier_guards_management: guards,
            ui,
            ..ApiConfig::default()
        },
    );
    let server = ServerConfig {
        header_read_timeout: args.header_read_timeout,
        max_connections: args.max_connections,
        write_timeout: args.write_timeout,
        ..ServerConfig::default()
    };
    let signal = shutdown_signal()?;
    let closing = broker.clone();
    // Tells the TCP server too; a dropped sender (the HTTP server ended
    // on its own) tells it as well.
    let (stopping, stop) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        signal.await;
        // From here publishes get 503 and /readyz says draining, while
        // in-flight requests finish.
        closing.close();
        let _ = stopping.send(true);
    };
    tracing::info!(addr = %listener.local_addr()?, "listening");
    // Logged after the HTTP line, which tools take as the first `addr=`.
    let tcp = match tcp_listener {
        Some(tcp_listener) => {
            tracing::info!(addr = %tcp_listener.local_addr()?, "tcp listening");
            let mut stop = stop;
            let stopped = async move {
                let _ = stop.wait_for(|stopping| *stopping).await;
            };
            Some(tokio::spawn(broker_tcp::serve(
                tcp_listener,
                broker.clone(),
                tcp_config,
                stopped,
            )))
        }
        None => None,
    };
    serve(listener, api, server, shutdown).await?;
    if let Some(tcp) = tcp {
        tcp.await??;
    }

    let deadline = args.drain_timeout;
    if let Storage::Redis(_) = storage {
        // Other replicas deliver from where this one stops: hand the
        // share back at once rather than drain it.
        match notifier.leave(deadline).await {
            Ok(handed) => tracing::info!(
                subscribers = handed,
                "deliveries handed to the other replicas; bye"
            ),
            Err(error) => tracing::warn!(
                %error,
                "could not hand deliveries back; other replicas take them over when the leases expire"
            ),
        }
    } else {
        tracing::info!(
            pending = notifier.pending(),
            ?deadline,
            "draining deliveries"
        );
        let left = notifier.drain(deadline).await;
        if left == 0 {
            tracing::info!("all deliveries drained; bye");
        } else {
            tracing::warn!(
                undelivered = left,
                "drain deadline passed; exiting with deliveries undelivered"
            );
        }
    }
    match storage {
        Storage::Memory => {}
        Storage::Disk(store) => {
            // Everything written reaches the disk before the process ends,
            // whatever the fsync policy.
            tokio::task::spawn_blocking(move || store.flush()).await??;
        }
        Storage::Redis(store) => {
            // The last cursor moves and retries; losing them would only
            // mean delivering those messages again.
            if let Err(error) = store.flush().await {
                tracing::warn!(%error, "the last cursor moves did not reach redis");
            }
        }
    }
    Ok(())
}

/// Where the broker's store lives, for what the shutdown owes it.
enum Storage {
    Memory,
    Disk(Arc<DiskStore>),
    Redis(Arc<RedisStore>),
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed
/// here, before the server says it listens, so an early signal is never
/// met by the default action (killing the process without a drain).
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutdown signalled; no longer accepting connections");
    })
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signalled; no longer accepting connections");
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(duration("5d"), Ok(Duration::from_secs(5 * 86_400)));
        for bad in ["", "s", "1w", "-1s", "1.5s", "ten"] {
            assert!(duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_sizes_and_fsync_policies() {
        assert_eq!(bytes("4096"), Ok(4096));
        assert_eq!(bytes("1GiB"), Ok(1 << 30));
        assert_eq!(bytes("500MiB"), Ok(500 << 20));
        assert_eq!(bytes("2KB"), Ok(2000));
        for bad in ["", "GiB", "1TiB", "-1", "1.5GiB", "99999999999999999999GiB"] {
            assert!(bytes(bad).is_err(), "{bad:?}");
        }
        assert_eq!(fsync("always"), Ok(Fsync::Always));
        assert_eq!(fsync("never"), Ok(Fsync::Never));
        assert_eq!(fsync("100ms"), Ok(Fsync::Every(Duration::from_millis(100))));
        for bad in ["", "0ms", "sometimes"] {
            assert!(fsync(bad).is_err(), "{bad:?}");
        }
        assert_eq!(retry("none"), Ok(Retry::Attempts(1)));
        assert_eq!(retry("standard"), Ok(Retry::standard()));
        assert_eq!(
            retry("1s,10s"),
            Ok(Retry::Schedule(
                vec![Duration::from_secs(1), Duration::from_secs(10)].into()
            ))
        );
        for bad in ["", "1s,,2s", "25h", "sometimes"] {
            assert!(retry(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}

#[cfg(test)]
mod readme {
    use std::collections::BTreeSet;

    use clap::CommandFactory;

    use super::Args;

    /// The README's configuration table lists exactly the flags and
    /// environment variables of `--help`.
    #[test]
    fn the_readme_table_matches_the_cli() {
        let readme = include_str!("../../README.md");
        let table = readme
            .split("| flag | environment | default | meaning |")
            .nth(1)
            .expect("the configuration table");
        let mut documented = BTreeSet::new();
        for row in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let flag = cells[1].trim_matches('`').to_owned();
            let env = cells[2].trim_matches('`').to_owned();
            documented.insert((flag, env));
        }
        let cli: BTreeSet<(String, String)> = Args::command()
            .get_arguments()
            .filter_map(|a| {
                let long = a.get_long()?;
                if long == "help" || long == "version" {
                    return None;
                }
                let env = a
                    .get_env()
                    .map(|e| e.to_string_lossy().into_owned())
                    .unwrap_or_default();
                Some((format!("--{long}"), env))
            })
            .collect();
        assert_eq!(documented, cli);
    }
}
