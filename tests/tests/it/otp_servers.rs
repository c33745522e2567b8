//! OTPs across real server processes: two servers sharing one PostgreSQL
//! consume an OTP exactly once between them; a restart loses no unexpired
//! OTP and brings back no used one; hvac drives creds and verify.

use std::process::Command;

use gatepass_api::Client;
use gatepass_tests::{run, serve_pair_on_postgres, DevServer};
use serde_json::{json, Map, Value};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres_consume_an_otp_once() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (a, b) = serve_pair_on_postgres(d, "otp2").await;
    let (ka, kb) = (
        Client::new(&a.settings).unwrap(),
        Client::new(&b.settings).unwrap(),
    );
    // Configured through A, seen by B: one database.
    ka.write(
        "ssh/roles/otp",
        &obj(json!({"key_type": "otp", "default_user": "ubuntu", "cidr_list": "10.0.0.0/8"})),
    )
    .await
    .unwrap();
    for round in 0..5 {
        let creds = kb
            .write("ssh/creds/otp", &obj(json!({"ip": "10.0.0.9"})))
            .await
            .unwrap()
            .unwrap();
        let otp = creds.data.unwrap()["key"].as_str().unwrap().to_string();
        let mut tasks = Vec::new();
        for i in 0..12 {
            let mut s = if i % 2 == 0 {
                a.settings.clone()
            } else {
                b.settings.clone()
            };
            s.token = None;
            let otp = otp.clone();
            tasks.push(tokio::spawn(async move {
                Client::new(&s)
                    .unwrap()
                    .write("ssh/verify", &obj(json!({"otp": otp})))
                    .await
            }));
        }
        let mut wins = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(Some(e)) => {
                    assert_eq!(e.data.unwrap()["username"], "ubuntu");
                    wins += 1;
                }
                Err(gatepass_api::Error::Api {
                    status: 400,
                    errors,
                }) => assert_eq!(errors, vec!["OTP not found"]),
                other => panic!("unexpected verify result: {other:?}"),
            }
        }
        assert_eq!(
            wins, 1,
            "round {round}: {wins} verifies succeeded across two servers"
        );
    }
}

#[test]
fn restart_keeps_unused_otps_and_never_revives_used_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut s = DevServer::start_in(&dir, "otp-restart-root");
    let (used, unused) = rt.block_on(async {
        let c = s.client();
        c.write(
            "ssh/roles/otp",
            &obj(json!({"key_type": "otp", "default_user": "ubuntu", "cidr_list": "10.0.0.0/8"})),
        )
        .await
        .unwrap();
        let mut otps = Vec::new();
        for _ in 0..2 {
            let e = c
                .write("ssh/creds/otp", &obj(json!({"ip": "10.0.0.9"})))
                .await
                .unwrap()
                .unwrap();
            otps.push(e.data.unwrap()["key"].as_str().unwrap().to_string());
        }
        c.write("ssh/verify", &obj(json!({"otp": otps[0]})))
            .await
            .unwrap();
        (otps[0].clone(), otps[1].clone())
    });
    s.stop();
    let s = DevServer::start_in(&dir, "otp-restart-root");
    rt.block_on(async {
        let anon = Client::new(&s.settings(None)).unwrap();
        let e = anon
            .write("ssh/verify", &obj(json!({"otp": unused})))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            e.data.unwrap()["ip"],
            "10.0.0.9",
            "an unused OTP was lost in the restart"
        );
        let err = anon
            .write("ssh/verify", &obj(json!({"otp": used})))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("OTP not found"),
            "a used OTP came back: {err}"
        );
    });
}

#[test]
fn hvac_writes_creds_and_verifies() {
    let s = DevServer::start();
    let (code, out, err) = run(Command::new("/usr/bin/python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/python/hvac_otp.py"))
        .envs(s.cli_env()));
    assert_eq!(code, 0, "hvac script failed:\n{out}\n{err}");
    assert!(out.contains("hvac otp: OK"));
}
