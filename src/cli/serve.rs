//! `catdog serve`: a trained model behind an HTTP API and a web page.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use catdog::serve::{self, Config, Server};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The model: a training run's folder (its best/ checkpoint) or a checkpoint folder
    pub model: PathBuf,
    /// Address to listen on, HOST:PORT (0.0.0.0:8080 to be reachable from other machines)
    #[arg(long, default_value_t = Config::default().addr, value_parser = parse_addr)]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub device: super::DeviceArgs,
    #[command(flatten)]
    pub precision: super::PrecisionArgs,
    /// Largest request body accepted, in bytes (413 above)
    #[arg(long, default_value_t = Config::default().max_upload_bytes)]
    pub max_upload_bytes: u64,
    /// Largest image accepted, in pixels, checked from its header (413 above)
    #[arg(long, default_value_t = Config::default().max_pixels)]
    pub max_pixels: u64,
    /// Most images in one forward pass
    #[arg(long, default_value_t = Config::default().max_batch)]
    pub max_batch: usize,
    /// How long the model waits for more requests to batch with one, in milliseconds
    #[arg(long, default_value_t = Config::default().batch_wait.as_millis() as u64)]
    pub batch_wait_ms: u64,
    /// Most requests waiting for the model (503 above)
    #[arg(long, default_value_t = Config::default().max_queue)]
    pub max_queue: usize,
    /// Seconds a client has to send its request headers, and its body
    #[arg(long, default_value_t = Config::default().read_timeout.as_secs())]
    pub read_timeout: u64,
}

/// `HOST:PORT` with an address or a name (`localhost:8080`); of a name's
/// addresses, the first IPv4 one, as a browser trying `localhost` would reach.
fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("{e}; expected HOST:PORT, e.g. 127.0.0.1:8080 or localhost:8080"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{text} resolves to no address"))
}

pub fn run(args: ServeArgs) -> Result<()> {
    let config = Config {
        addr: args.addr,
        device: args.device.device,
        precision: args.precision.resolve(args.device.device),
        max_upload_bytes: args.max_upload_bytes,
        max_pixels: args.max_pixels,
        max_batch: args.max_batch,
        batch_wait: Duration::from_millis(args.batch_wait_ms),
        max_queue: args.max_queue,
        read_timeout: Duration::from_secs(args.read_timeout),
    };
    let server = Server::bind(&args.model, config)
        .with_context(|| format!("cannot serve {}", args.model.display()))?;
    let model = server.model();
    eprintln!(
        "serving {} ({}; weights sha256 {})",
        model.path.display(),
        model.classes.join(", "),
        &model.weights_sha256[..12]
    );
    eprintln!(
        "open http://{}/ (API: POST /v1/predict, GET /v1/model, GET /healthz); Ctrl-C stops",
        server.local_addr()
    );
    serve::runtime()?.block_on(server.run(async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No signal handling here: serve until the process is killed.
            std::future::pending::<()>().await;
        }
    }))?;
    eprintln!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_may_name_the_host() {
        assert_eq!(parse_addr("0.0.0.0:80").unwrap().to_string(), "0.0.0.0:80");
        assert_eq!(
            parse_addr("localhost:8080").unwrap(),
            SocketAddr::from(([127, 0, 0, 1], 8080))
        );
        let err = parse_addr("localhost").unwrap_err();
        assert!(err.contains("HOST:PORT"), "{err}");
    }
}
