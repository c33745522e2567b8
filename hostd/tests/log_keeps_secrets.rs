//! hostd's log at its most verbose never holds the host token: the login
//! socket's HTTP client (ureq) logs each request's head at debug, and the
//! token is one of its headers. Its own file: the subscriber and the `log`
//! bridge are the process's, set once.

// A test file: it fails the test by unwrapping (the workspace denies these
// lints in shipped code only).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pam_gatepass::client::{Client, Transport, Verified};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

const TOKEN: &str = "hvs.host-token-that-must-stay-out-of-logs";

/// Everything written to the log.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Captured {
    type Writer = Captured;
    fn make_writer(&'w self) -> Captured {
        self.clone()
    }
}

#[test]
fn the_host_token_never_reaches_the_log() {
    let log = Captured::default();
    // As verbose as GATEPASS_LOG can ask, ureq by name included.
    let filter = EnvFilter::new("trace,ureq=trace,ureq::unit=trace");
    gatepass_hostd::logging::subscriber(filter, log.clone(), true)
        .try_init()
        .unwrap();

    // A server that reads one request and refuses the OTP.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut r = BufReader::new(&s);
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            head.push(line.clone());
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let body = br#"{"errors":["OTP not found"]}"#;
        write!(
            &s,
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        (&s).write_all(body).unwrap();
        head.concat()
    });

    let transport: Transport = serde_json::from_value(serde_json::json!({
        "servers": [format!("http://{addr}")],
        "mount": "ssh",
        "namespace": null,
        "trust": "any_certificate",
        "tls_server_name": null,
        "token": TOKEN,
    }))
    .unwrap();
    let client = Client::new(transport).unwrap();
    tracing::debug!("asking the server");
    let v = client.verify("otp", Duration::from_secs(5));
    assert!(matches!(v, Verified::Answer { .. }), "{v:?}");
    let head = server.join().unwrap();
    assert!(head.contains(TOKEN), "the token was not sent: {head}");

    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    // The log was on at debug, and caught what it was given.
    assert!(text.contains("asking the server"), "{text}");
    assert!(
        !text.contains(TOKEN),
        "the host token is in the log:\n{text}"
    );
}
