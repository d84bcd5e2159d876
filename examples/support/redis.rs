//! What the Redis load examples (`redis_load`, `cluster_load`) share: a
//! private `redis-server`, and a client publishing back to back. Included
//! by `#[path]`.

use std::{
    net::{SocketAddr, TcpListener as StdListener},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A private redis-server, killed on drop.
pub(crate) struct PrivateRedis {
    child: Child,
    _dir: tempfile::TempDir,
    pub(crate) url: String,
}

impl PrivateRedis {
    pub(crate) fn start(appendfsync: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                appendfsync,
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (the Debian package redis-server)");
        let url = format!("redis://127.0.0.1:{port}/");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        PrivateRedis {
            child,
            _dir: dir,
            url,
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 keep-alive connection publishing on `topic` back to back
/// until `deadline`; returns how many were accepted.
pub(crate) async fn publisher(
    addr: SocketAddr,
    topic: &'static str,
    token: String,
    payload: Bytes,
    deadline: Instant,
) -> u64 {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let auth = format!("Bearer {token}");
    let mut accepted = 0;
    while Instant::now() < deadline {
        let req = Request::post(format!("http://{addr}/v1/topics/{topic}/messages"))
            .header("host", addr.to_string())
            .header("authorization", &auth)
            .header("content-type", "application/octet-stream")
            .body(Full::new(payload.clone()))
            .unwrap();
        if sender.ready().await.is_err() {
            break;
        }
        let Ok(res) = sender.send_request(req).await else {
            break;
        };
        if res.status() == 202 {
            accepted += 1;
        }
        let _ = res.into_body().collect().await;
    }
    accepted
}
