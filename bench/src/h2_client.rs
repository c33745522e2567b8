//! A lean HTTP/2 client over TLS for the fleet's simulated hosts: one
//! connection carries many hosts' polls, each poll a stream.
//!
//! Written on the `h2` crate rather than taken from reqwest for the reason
//! `h1` gives: the simulated hosts share the machine's two cores with the
//! servers they measure. reqwest's pool, URL parsing, header maps and
//! per-request tasks made up most of the simulated hosts' CPU per poll
//! (BENCHMARKS.md, "Fleet"), which a real fleet spends on its own machines.
//! What is left here is what a poll needs: a stream, its headers, and its
//! body read to the end.

use anyhow::{bail, Context};
use bytes::Bytes;
use h2::client::SendRequest;

use crate::h1::Target;

/// One HTTP/2 connection; clones share it.
#[derive(Clone)]
pub struct Conn {
    send: SendRequest<Bytes>,
    authority: String,
}

impl Conn {
    /// Connects and starts the task that drives the connection.
    pub async fn open(target: &Target) -> anyhow::Result<Conn> {
        let io = target.connect_h2().await?;
        let (send, conn) = h2::client::handshake(io)
            .await
            .with_context(|| format!("HTTP/2 handshake with {}", target.host_port()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            send,
            authority: target.host_port().to_string(),
        })
    }

    /// `GET path` (from the root, `/v1/...`) with the token; the status and
    /// the whole body. Waits for room when the server's limit of streams
    /// on this connection is reached.
    pub async fn get(&self, path: &str, token: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        let request = http::Request::get(format!("https://{}{path}", self.authority))
            .header("x-vault-token", token)
            .body(())?;
        let mut send = self.send.clone().ready().await?;
        let (answer, _) = send.send_request(request, true)?;
        let answer = answer.await?;
        let status = answer.status().as_u16();
        let mut body = answer.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            // Credit the server's window back as the bytes are taken.
            body.flow_control().release_capacity(chunk.len())?;
            bytes.extend_from_slice(&chunk);
            if bytes.len() > MAX_BODY {
                bail!("an answer over {MAX_BODY} bytes");
            }
        }
        Ok((status, bytes))
    }
}

/// Largest answer read: a host's state is a few KB.
const MAX_BODY: usize = 16 * 1024 * 1024;
