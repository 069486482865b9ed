//! `catdog serve`: a trained model behind an HTTP API and a web page.
//!
//! ```text
//! POST /v1/predict[?explain=1]   an image (raw body, or multipart field `image`) -> JSON
//! GET  /v1/model                 classes, preprocessing, weights' SHA-256, training time, test accuracy
//! GET  /healthz                  liveness and batching counters
//! GET  /                         a page to drop a photo on (embedded, works offline)
//! ```
//!
//! Threads: tokio runs the HTTP side only. Decoding and Grad-CAM pictures run on its blocking
//! pool, and the network on one dedicated inference thread (module `inference`) that gathers the
//! requests waiting for it into one batch; so the server keeps answering `/healthz` while the
//! model works.
//!
//! Hostile or broken input costs its request, never the server: uploads are size-limited and
//! decoded by [`crate::data::decode`] (pixel limit from the header, decoder panics caught), and
//! a client that sends its headers or body too slowly is cut off.

mod api;
mod error;
mod inference;
mod info;
mod upload;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;

pub use info::ModelInfo;

use crate::device::DeviceChoice;

/// What can stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model folder cannot be used.
    #[error(transparent)]
    Model(#[from] crate::Error),
    /// The address cannot be listened on.
    #[error(
        "cannot listen on {addr}: {source}\n  hint: pick a free port with --addr, e.g. 127.0.0.1:0"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A setting is out of range.
    #[error("invalid {setting}: {problem}")]
    Setting {
        setting: &'static str,
        problem: String,
    },
    /// The async runtime could not be started.
    #[error("cannot start the server's runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// The server's settings; [`Config::default`] is what `catdog serve` uses without options.
#[derive(Clone, Debug)]
pub struct Config {
    pub addr: SocketAddr,
    /// Where the network runs.
    pub device: DeviceChoice,
    /// The CPU kernels' products.
    pub precision: crate::model::Precision,
    /// A request body (the image, or the whole multipart form) over this is refused with 413.
    pub max_upload_bytes: u64,
    /// An image with more pixels is refused from its header (413): decompression bombs never expand.
    pub max_pixels: u64,
    /// Most images in one forward pass.
    pub max_batch: usize,
    /// How long the inference thread waits for more requests once it has one. Short: it adds
    /// to every lone request's latency, and requests that arrive together are already waiting.
    pub batch_wait: Duration,
    /// Most requests waiting for the model; more are refused with 503 rather than queued
    /// without bound.
    pub max_queue: usize,
    /// A client must send its headers, and its body, within this (else the connection is
    /// closed, or the request answered 408); also the idle keep-alive limit.
    pub read_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            device: DeviceChoice::default(),
            precision: Default::default(),
            max_upload_bytes: 16 << 20,
            max_pixels: crate::data::decode::Limits::default().max_pixels,
            max_batch: 16,
            batch_wait: Duration::from_millis(2),
            max_queue: 256,
            read_timeout: Duration::from_secs(30),
        }
    }
}

impl Config {
    fn check(&self) -> Result<(), Error> {
        let problem = |setting, problem: &str| {
            Err(Error::Setting {
                setting,
                problem: problem.to_owned(),
            })
        };
        if self.max_upload_bytes == 0 {
            return problem("max upload bytes", "must be at least 1");
        }
        if self.max_pixels == 0 {
            return problem("max pixels", "must be at least 1");
        }
        if self.max_batch == 0 {
            return problem("max batch", "must be at least 1");
        }
        if self.max_queue == 0 {
            return problem("max queue", "must be at least 1");
        }
        if self.read_timeout.is_zero() {
            return problem("read timeout", "must be more than 0");
        }
        Ok(())
    }
}

/// A loaded model, its inference thread and a bound socket: ready to [`run`](Server::run).
pub struct Server {
    listener: std::net::TcpListener,
    app: axum::Router,
    info: Arc<ModelInfo>,
    read_timeout: Duration,
}

impl Server {
    /// Loads the model (a checkpoint folder or a run folder, see [`crate::run::resolve_model`]),
    /// starts the inference thread and binds `config.addr` (port 0 picks a free port; see
    /// [`Server::local_addr`]).
    pub fn bind(model: &Path, config: Config) -> Result<Server, Error> {
        config.check()?;
        let dir = crate::run::resolve_model(model)?;
        let (engine, meta) = inference::Engine::load(&dir, &config)?;
        let info = ModelInfo::read(&dir, meta)?;
        let listener = std::net::TcpListener::bind(config.addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| Error::Bind {
                addr: config.addr,
                source,
            })?;
        let info = Arc::new(info);
        let shared = api::Shared {
            engine,
            info: info.clone(),
            config: Arc::new(config.clone()),
            started: std::time::Instant::now(),
        };
        Ok(Server {
            listener,
            app: api::router(shared),
            info,
            read_timeout: config.read_timeout,
        })
    }

    /// The model it serves.
    pub fn model(&self) -> &ModelInfo {
        &self.info
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP socket has an address")
    }

    /// Serves until `shutdown` completes, then stops accepting, lets the requests in progress
    /// finish (for at most the read time-out) and returns. Must run inside a tokio runtime.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let listener = tokio::net::TcpListener::from_std(self.listener).map_err(Error::Runtime)?;
        // hyper's own HTTP/1 server rather than axum::serve: it alone can cut off a client that
        // is slow to send its headers (slowloris), which also bounds idle keep-alive connections.
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.read_timeout);
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let service = TowerToHyperService::new(self.app.clone());
                        let connection = http.serve_connection(TokioIo::new(stream), service);
                        let connection = graceful.watch(connection);
                        // A connection's error (a reset, a time-out) concerns that client only.
                        tokio::spawn(async move { let _ = connection.await; });
                    }
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                },
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        let _ = tokio::time::timeout(self.read_timeout, graceful.shutdown()).await;
        Ok(())
    }

    /// Runs the server on a thread of its own with its own runtime, until the returned handle
    /// is stopped or dropped (for tests and programs that embed the server).
    pub fn spawn(self) -> Running {
        let addr = self.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("catdog-serve".into())
            .spawn(move || {
                runtime()?.block_on(self.run(async {
                    let _ = stopped.await;
                }))
            })
            .expect("the OS can start a thread");
        Running {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

/// The runtime for the HTTP side. Two workers are plenty: handlers only move bytes and
/// wait, the CPU work happens on the blocking pool and the inference thread.
pub fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("catdog-http")
        .enable_all()
        .build()
        .map_err(Error::Runtime)
}

/// A server started by [`Server::spawn`]; dropping it stops the server.
pub struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), Error>>>,
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits for it.
    pub fn stop(mut self) -> Result<(), Error> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<(), Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A test is failing: stop the server, but neither wait for it nor panic again.
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
        } else {
            let _ = self.shut_down();
        }
    }
}
