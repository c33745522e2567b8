//! Storage under concurrency, on SQLite and PostgreSQL: writes arriving
//! together are committed together (group commit), and that must not change
//! what each caller sees — an insert-if-free wins once, a take gets a value
//! once, a guarded unit stores all of its values or none.

use std::collections::HashSet;
use std::sync::Arc;

use gatepass_tests::inproc::{Server, BACKENDS};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_keep_their_meaning_when_committed_together() {
    for backend in BACKENDS {
        let server = Server::start(backend).await;
        let core = server.core.clone();

        // Many callers insert one key if free: exactly one stores it, and
        // the stored value is the winner's.
        let mut tasks = Vec::new();
        for i in 0..64u32 {
            let core = core.clone();
            tasks.push(tokio::spawn(async move {
                (i, core.storage.put_if_absent("race/one", &i).await.unwrap())
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (i, won) = t.await.unwrap();
            if won {
                winners.push(i);
            }
        }
        assert_eq!(winners.len(), 1, "{backend:?}: winners {winners:?}");
        let stored: Option<u32> = core.storage.get("race/one").await.unwrap();
        assert_eq!(stored, Some(winners[0]), "{backend:?}");

        // 50 values, each taken by four callers at once: each value goes to
        // exactly one of them, intact, and is gone afterwards.
        for k in 0..50u32 {
            core.storage
                .put(&format!("take/{k:02}"), &json!({ "k": k }))
                .await
                .unwrap();
        }
        let mut tasks = Vec::new();
        for n in 0..200u32 {
            let core = core.clone();
            let key = format!("take/{:02}", n % 50);
            tasks.push(tokio::spawn(async move {
                let got: Option<Value> = core.storage.take(&key).await.unwrap();
                (key, got)
            }));
        }
        let mut taken = HashSet::new();
        for t in tasks {
            let (key, got) = t.await.unwrap();
            if let Some(v) = got {
                let k: u32 = key["take/".len()..].parse().unwrap();
                assert_eq!(v, json!({ "k": k }), "{backend:?}: {key}");
                assert!(taken.insert(key.clone()), "{backend:?}: {key} taken twice");
            }
        }
        assert_eq!(taken.len(), 50, "{backend:?}");
        assert!(core
            .storage
            .keys_with_prefix("take/")
            .await
            .unwrap()
            .is_empty());

        // Guarded units racing for one key: one stores all of its values,
        // the others store none.
        let mut tasks = Vec::new();
        for i in 0..20u32 {
            let core = core.clone();
            tasks.push(tokio::spawn(async move {
                let items = vec![
                    ("guard/key".to_string(), json!(i)),
                    (format!("guard/side/{i:02}"), json!(i)),
                    (format!("guard/more/{i:02}"), json!(i)),
                ];
                (i, core.storage.put_many(&items, true).await.unwrap())
            }));
        }
        let mut won = Vec::new();
        for t in tasks {
            let (i, ok) = t.await.unwrap();
            if ok {
                won.push(i);
            }
        }
        assert_eq!(won.len(), 1, "{backend:?}: {won:?}");
        let w = won[0];
        assert_eq!(
            core.storage.keys_with_prefix("guard/").await.unwrap(),
            vec![
                "guard/key".to_string(),
                format!("guard/more/{w:02}"),
                format!("guard/side/{w:02}"),
            ],
            "{backend:?}"
        );
        let v: Option<u32> = core.storage.get("guard/key").await.unwrap();
        assert_eq!(v, Some(w));

        // Deletes racing: each key reports deleted to exactly one caller.
        for k in 0..10u32 {
            core.storage.put(&format!("del/{k}"), &k).await.unwrap();
        }
        let hits = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut tasks = Vec::new();
        for n in 0..40u32 {
            let (core, hits) = (core.clone(), hits.clone());
            tasks.push(tokio::spawn(async move {
                if core
                    .storage
                    .delete(&format!("del/{}", n % 10))
                    .await
                    .unwrap()
                {
                    hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 10);

        // Concurrent puts of distinct keys all land; a unit naming one key
        // twice still applies in its own order.
        let mut tasks = Vec::new();
        for n in 0..100u32 {
            let core = core.clone();
            tasks.push(tokio::spawn(async move {
                core.storage.put(&format!("put/{n:03}"), &n).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            core.storage.keys_with_prefix("put/").await.unwrap().len(),
            100
        );
        core.storage
            .put_many(
                &[
                    ("twice".to_string(), json!(1)),
                    ("twice".to_string(), json!(2)),
                ],
                false,
            )
            .await
            .unwrap();
        let v: Option<u32> = core.storage.get("twice").await.unwrap();
        assert_eq!(v, Some(2), "{backend:?}: the later put of a unit wins");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_revokes_due_leases_in_bulk_and_spares_renewed_ones() {
    use gatepass_server::leases::{self, Lease};
    let server = Server::start(BACKENDS[0]).await;
    let core = server.core.clone();
    let now = server.clock.now();
    let lease = |i: u32, expire_time: i64| Lease {
        id: format!("ssh/creds/r/{i:05}"),
        secret_key: format!("secret/{i:05}"),
        issue_time: now - 100,
        expire_time,
        last_renewal: None,
        renewable: true,
        max_expire: now + 3600,
    };
    for i in 0..1500u32 {
        core.storage
            .put(&format!("secret/{i:05}"), &json!({ "i": i }))
            .await
            .unwrap();
        leases::create(&core, &lease(i, now - 10)).await.unwrap();
    }
    // A lease renewed past now whose old expiry entry was left behind.
    core.storage
        .put("secret/renewed", &json!({}))
        .await
        .unwrap();
    let renewed = Lease {
        secret_key: "secret/renewed".into(),
        ..lease(9999, now + 600)
    };
    leases::create(&core, &renewed).await.unwrap();
    core.storage
        .put(
            &format!("lease-exp/{:016x}/{}", now - 20, renewed.id),
            &json!({}),
        )
        .await
        .unwrap();

    let first = leases::sweep(&core, now, 1000).await.unwrap();
    let second = leases::sweep(&core, now, 1000).await.unwrap();
    assert_eq!(first + second, 1500);
    let secrets = core.storage.keys_with_prefix("secret/").await.unwrap();
    assert_eq!(secrets, vec!["secret/renewed".to_string()]);
    assert_eq!(
        core.storage.keys_with_prefix("lease/").await.unwrap(),
        vec![format!("lease/{}", renewed.id)]
    );
    // Only the renewed lease's own expiry entry is left.
    assert_eq!(
        core.storage.keys_with_prefix("lease-exp/").await.unwrap(),
        vec![format!("lease-exp/{:016x}/{}", now + 600, renewed.id)]
    );
}
