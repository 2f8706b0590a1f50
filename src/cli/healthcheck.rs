//! `keygate healthcheck`: `GET /healthz` on the server this machine runs, for a container's
//! `HEALTHCHECK` (the runtime image has no curl). Its address is the server's own setting,
//! `KEYGATE_LISTEN` (a wildcard address asked at the loopback address); with native TLS the
//! server must present the very certificate in `KEYGATE_TLS_CERT`, whatever names it holds.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use clap::Args;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use crate::{config::Settings, tls};

/// The whole check, connecting included.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The server's address [default: KEYGATE_LISTEN's, at the loopback address if it is a
    /// wildcard].
    #[arg(long, value_name = "ADDR")]
    addr: Option<SocketAddr>,
}

pub async fn run(args: HealthcheckArgs, settings: &Settings) -> anyhow::Result<()> {
    let addr = args.addr.unwrap_or_else(|| local(settings.listen));
    let status = tokio::time::timeout(TIMEOUT, status(addr, settings))
        .await
        .with_context(|| format!("no answer from {addr} within {TIMEOUT:?}"))??;
    if status != 200 {
        anyhow::bail!("{addr} answered /healthz with {status}");
    }
    println!("ok");
    Ok(())
}

/// The address to reach a server listening on `listen` from this machine.
fn local(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

async fn status(addr: SocketAddr, settings: &Settings) -> anyhow::Result<u16> {
    let stream = TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
    match &settings.tls {
        None => get(stream, addr).await,
        Some(files) => {
            let config = tls::pinned_client_config(&files.cert)?;
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let stream = connector.connect(name, stream).await.with_context(|| format!("TLS with {addr} failed"))?;
            get(stream, addr).await
        }
    }
}

/// `GET /healthz` on `stream`; the status code of the answer.
async fn get(mut stream: impl AsyncRead + AsyncWrite + Unpin, addr: SocketAddr) -> anyhow::Result<u16> {
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    // The status line is in the first bytes of the answer: `HTTP/1.1 200 OK`.
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < 12 {
        let n = stream.read(&mut head[read..]).await?;
        if n == 0 {
            break;
        }
        read += n;
    }
    let line = std::str::from_utf8(&head[..read]).unwrap_or_default();
    line.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("{addr} did not answer HTTP"))
}
