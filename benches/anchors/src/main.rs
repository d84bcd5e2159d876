//! `anchors`: closed-loop durable-publish load against one of three systems.
//!
//! ```text
//! anchors http  --addr 127.0.0.1:8080 --topic bench --concurrency 16 --size 100 --seconds 3
//! anchors redis --addr 127.0.0.1:6390 --concurrency 16 --size 100 --seconds 3
//! anchors nats  --addr 127.0.0.1:4333 --concurrency 16 --size 100 --seconds 3
//! ```
//!
//! C publishers, each on its own connection, each waiting for its answer
//! (HTTP 202, the XADD reply, the JetStream PubAck) before sending the next.
//! After a short warm-up (not counted), every publish *started* inside the
//! measured window is counted and its latency recorded; the rate is that
//! count over the time from the window's start to the last such publish's
//! answer. One line of `key=value` results goes to stdout.
//!
//! Everything is bounded: each publish has a 10 s timeout, the window is at
//! most 30 s, and the whole run is given up after window + warm-up + 30 s.

use std::{
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{client::conn::http1, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, sync::Barrier};

const USAGE: &str = "\
usage: anchors http|redis|nats --addr HOST:PORT [options]
  --concurrency C   closed-loop publishers, one connection each (default 1)
  --size BYTES      payload size (default 100)
  --seconds S       measured window, at most 30 (default 3)
  --warmup S        warm-up before the window, not counted (default 0.5)
  --threads N       client runtime threads; 1 = current-thread (default 1)
  --topic NAME      http: topic to publish on (default bench)
  --key NAME        redis: stream key (default bench); deleted first unless --keep
  --subject SUBJ    nats: subject (default bench.anchors); must match the stream
  --stream NAME     nats: stream, created on bench.> with file storage if missing,
                    purged first unless --keep (default BENCH)
  --keep            do not delete/purge the redis key / nats stream first
  --label TEXT      label echoed in the result line";

const OP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Http,
    Redis,
    Nats,
}

#[derive(Clone, Debug)]
struct Args {
    system: System,
    addr: String,
    concurrency: usize,
    size: usize,
    seconds: f64,
    warmup: f64,
    threads: usize,
    topic: String,
    key: String,
    subject: String,
    stream: String,
    keep: bool,
    label: String,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let system = match it.next().as_deref() {
        Some("http") => System::Http,
        Some("redis") => System::Redis,
        Some("nats") => System::Nats,
        Some("-h" | "--help") | None => return Err(String::new()),
        Some(other) => return Err(format!("unknown system {other:?}")),
    };
    let mut a = Args {
        system,
        addr: String::new(),
        concurrency: 1,
        size: 100,
        seconds: 3.0,
        warmup: 0.5,
        threads: 1,
        topic: "bench".into(),
        key: "bench".into(),
        subject: "bench.anchors".into(),
        stream: "BENCH".into(),
        keep: false,
        label: String::new(),
    };
    while let Some(flag) = it.next() {
        if flag == "--keep" {
            a.keep = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let val = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<f64>().map_err(|_| format!("{flag}: not a number: {v}"));
        match flag.as_str() {
            "--addr" => a.addr = val,
            "--concurrency" | "-c" => a.concurrency = num(&val)? as usize,
            "--size" => a.size = num(&val)? as usize,
            "--seconds" => a.seconds = num(&val)?,
            "--warmup" => a.warmup = num(&val)?,
            "--threads" => a.threads = num(&val)? as usize,
            "--topic" => a.topic = val,
            "--key" => a.key = val,
            "--subject" => a.subject = val,
            "--stream" => a.stream = val,
            "--label" => a.label = val,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if a.addr.is_empty() {
        return Err("--addr is required".into());
    }
    if a.concurrency == 0 || a.concurrency > 4096 {
        return Err("--concurrency must be 1..=4096".into());
    }
    if !(a.seconds > 0.0 && a.seconds <= 30.0) {
        return Err("--seconds must be in (0, 30]".into());
    }
    if !(0.0..=10.0).contains(&a.warmup) {
        return Err("--warmup must be in [0, 10]".into());
    }
    if a.threads == 0 {
        return Err("--threads must be >= 1".into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("anchors: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    let hard_limit = Duration::from_secs_f64(args.seconds + args.warmup + 30.0);
    match rt.block_on(async { tokio::time::timeout(hard_limit, run(args)).await }) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("anchors: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("anchors: gave up after {hard_limit:?}");
            ExitCode::FAILURE
        }
    }
}

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

/// One publisher's connection.
enum Conn {
    Http {
        sender: http1::SendRequest<Full<Bytes>>,
        path: Arc<str>,
        host: Arc<str>,
        auth: Arc<str>,
    },
    Redis {
        conn: redis::aio::MultiplexedConnection,
        key: Arc<str>,
    },
    Nats {
        js: async_nats::jetstream::Context,
        subject: Arc<str>,
        // Kept so the connection lives as long as the publisher.
        _client: async_nats::Client,
    },
}

impl Conn {
    async fn publish(&mut self, payload: &Bytes) -> Result<(), BoxErr> {
        match self {
            Conn::Http {
                sender,
                path,
                host,
                auth,
            } => {
                sender.ready().await?;
                let req = Request::post(&**path)
                    .header(hyper::header::HOST, &**host)
                    .header(hyper::header::AUTHORIZATION, &**auth)
                    .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
                    .body(Full::new(payload.clone()))?;
                let resp = sender.send_request(req).await?;
                let status = resp.status();
                let body = resp.into_body().collect().await?.to_bytes();
                if status != StatusCode::ACCEPTED {
                    return Err(format!(
                        "publish answered {status}: {}",
                        String::from_utf8_lossy(&body)
                    )
                    .into());
                }
                Ok(())
            }
            Conn::Redis { conn, key } => {
                let _id: String = redis::cmd("XADD")
                    .arg(&**key)
                    .arg("*")
                    .arg("d")
                    .arg(payload.as_ref())
                    .query_async(conn)
                    .await?;
                Ok(())
            }
            Conn::Nats { js, subject, .. } => {
                let ack = js.publish(subject.to_string(), payload.clone()).await?;
                ack.await?;
                Ok(())
            }
        }
    }
}

async fn http_conn(addr: &str) -> Result<http1::SendRequest<Full<Bytes>>, BoxErr> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Registers (or finds again) the publisher "bench" on the topic; its token.
async fn http_token(addr: &str, topic: &str) -> Result<String, BoxErr> {
    let mut sender = http_conn(addr).await?;
    let req = Request::post(format!("/v1/topics/{topic}/publishers"))
        .header(hyper::header::HOST, addr)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(br#"{"name":"bench"}"#)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body);
    if !status.is_success() {
        return Err(format!("registering the publisher answered {status}: {text}").into());
    }
    let start = text
        .find("\"token\":\"")
        .ok_or_else(|| format!("no token in {text}"))?
        + "\"token\":\"".len();
    let end = text[start..]
        .find('"')
        .ok_or_else(|| format!("bad token in {text}"))?;
    Ok(text[start..start + end].to_string())
}

async fn connect_all(args: &Args) -> Result<Vec<Conn>, BoxErr> {
    let mut conns = Vec::with_capacity(args.concurrency);
    match args.system {
        System::Http => {
            let token = http_token(&args.addr, &args.topic).await?;
            let path: Arc<str> = format!("/v1/topics/{}/messages", args.topic).into();
            let host: Arc<str> = args.addr.clone().into();
            let auth: Arc<str> = format!("Bearer {token}").into();
            for _ in 0..args.concurrency {
                conns.push(Conn::Http {
                    sender: http_conn(&args.addr).await?,
                    path: path.clone(),
                    host: host.clone(),
                    auth: auth.clone(),
                });
            }
        }
        System::Redis => {
            let client = redis::Client::open(format!("redis://{}/", args.addr))?;
            let cfg = redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(OP_TIMEOUT))
                .set_connection_timeout(Some(Duration::from_secs(5)));
            let key: Arc<str> = args.key.clone().into();
            if !args.keep {
                let mut c = client.get_multiplexed_async_connection_with_config(&cfg).await?;
                let _: i64 = redis::cmd("DEL").arg(&*key).query_async(&mut c).await?;
            }
            for _ in 0..args.concurrency {
                // Each call opens its own TCP connection.
                let conn = client.get_multiplexed_async_connection_with_config(&cfg).await?;
                conns.push(Conn::Redis {
                    conn,
                    key: key.clone(),
                });
            }
        }
        System::Nats => {
            use async_nats::jetstream::stream::{Config, StorageType};
            let url = format!("nats://{}", args.addr);
            let admin = async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(5))
                .connect(&url)
                .await?;
            let js = async_nats::jetstream::new(admin.clone());
            let mut stream = js
                .get_or_create_stream(Config {
                    name: args.stream.clone(),
                    subjects: vec!["bench.>".into()],
                    storage: StorageType::File,
                    ..Default::default()
                })
                .await?;
            let info = stream.info().await?;
            if info.config.storage != StorageType::File {
                return Err(format!("stream {} is not file-backed", args.stream).into());
            }
            if !args.keep {
                stream.purge().await?;
            }
            admin.flush().await?;
            drop(admin);
            let subject: Arc<str> = args.subject.clone().into();
            for _ in 0..args.concurrency {
                let client = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(5))
                    .connect(&url)
                    .await?;
                let mut js = async_nats::jetstream::new(client.clone());
                js.set_timeout(OP_TIMEOUT);
                conns.push(Conn::Nats {
                    js,
                    subject: subject.clone(),
                    _client: client,
                });
            }
        }
    }
    Ok(conns)
}

struct WorkerResult {
    latencies_ns: Vec<u64>,
    last_done: Option<Instant>,
}

async fn run(args: Args) -> Result<(), BoxErr> {
    let conns = connect_all(&args).await?;
    let payload = Bytes::from(
        (0..args.size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    );
    let barrier = Arc::new(Barrier::new(args.concurrency + 1));
    let times = Arc::new(std::sync::OnceLock::<(Instant, Instant)>::new());
    let mut handles = Vec::with_capacity(args.concurrency);
    for mut conn in conns {
        let barrier = barrier.clone();
        let times = times.clone();
        let payload = payload.clone();
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            let (t0, t1) = *times.get().expect("times set before the barrier");
            let mut latencies_ns = Vec::with_capacity(64 * 1024);
            let mut last_done = None;
            loop {
                let start = Instant::now();
                if start >= t1 {
                    break;
                }
                match tokio::time::timeout(OP_TIMEOUT, conn.publish(&payload)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(format!("publish failed: {e}")),
                    Err(_) => return Err(format!("publish took over {OP_TIMEOUT:?}")),
                }
                let done = Instant::now();
                if start >= t0 {
                    latencies_ns.push((done - start).as_nanos() as u64);
                    last_done = Some(done);
                }
            }
            Ok(WorkerResult {
                latencies_ns,
                last_done,
            })
        }));
    }
    let now = Instant::now();
    let t0 = now + Duration::from_secs_f64(args.warmup);
    let t1 = t0 + Duration::from_secs_f64(args.seconds);
    times.set((t0, t1)).expect("set once");
    barrier.wait().await;

    let mut all = Vec::new();
    let mut last = t0;
    for h in handles {
        let r = h.await.map_err(|e| format!("worker panicked: {e}"))??;
        all.extend_from_slice(&r.latencies_ns);
        if let Some(d) = r.last_done {
            last = last.max(d);
        }
    }
    if all.is_empty() {
        return Err("no publish completed in the window".into());
    }
    all.sort_unstable();
    let n = all.len();
    let pct = |p: f64| all[(((n as f64) * p).ceil() as usize).clamp(1, n) - 1] as f64 / 1000.0;
    let elapsed = (last - t0).as_secs_f64();
    let rate = n as f64 / elapsed;
    let mean = all.iter().sum::<u64>() as f64 / n as f64 / 1000.0;
    let system = match args.system {
        System::Http => "http",
        System::Redis => "redis",
        System::Nats => "nats",
    };
    println!(
        "system={system} label={} concurrency={} size={} ops={n} secs={elapsed:.3} rate={rate:.1} \
         p50_us={:.1} p99_us={:.1} mean_us={mean:.1} max_us={:.1}",
        if args.label.is_empty() { system } else { &args.label },
        args.concurrency,
        args.size,
        pct(0.50),
        pct(0.99),
        all[n - 1] as f64 / 1000.0,
    );
    Ok(())
}
