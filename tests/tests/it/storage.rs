//! Storage under concurrency, on SQLite and PostgreSQL: writes arriving
//! together are committed together (group commit), and that must not change
//! what each caller sees — an insert-if-free wins once, a take gets a value
//! once, a guarded unit stores all of its values or none, an update
//! (compare-and-swap) applies to the value it read or reads again.

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
async fn concurrent_updates_each_apply_once_to_the_value_they_read() {
    use gatepass_server::storage::Change;
    for backend in BACKENDS {
        let server = Server::start(backend).await;
        let core = server.core.clone();

        // 40 increments at once, among puts of other keys: none is lost.
        core.storage.put("swap/counter", &0u32).await.unwrap();
        let mut tasks = Vec::new();
        for n in 0..40u32 {
            let core = core.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("swap/other/{n:02}");
                let other = core.storage.put(&key, &n);
                let add = core
                    .storage
                    .update("swap/counter", |v: u32| Ok((Change::Put(v + 1), v)));
                let (put, added) = tokio::join!(other, add);
                put.unwrap();
                added.unwrap()
            }));
        }
        let mut seen = Vec::new();
        for t in tasks {
            seen.push(t.await.unwrap().expect("the counter exists"));
        }
        seen.sort();
        assert_eq!(
            seen,
            (0..40).collect::<Vec<_>>(),
            "{backend:?}: each saw a different value"
        );
        let v: Option<u32> = core.storage.get("swap/counter").await.unwrap();
        assert_eq!(v, Some(40), "{backend:?}");

        // Five uses, twenty takers: exactly five get one; the last of them
        // deletes the entry; a refusal writes nothing.
        core.storage.put("swap/uses", &5u32).await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let core = core.clone();
            tasks.push(tokio::spawn(async move {
                core.storage
                    .update("swap/uses", |left: u32| {
                        Ok(match left {
                            0 => (Change::Keep, false),
                            1 => (Change::Delete, true),
                            n => (Change::Put(n - 1), true),
                        })
                    })
                    .await
                    .unwrap()
                    .unwrap_or(false)
            }));
        }
        let mut got = 0;
        for t in tasks {
            got += u32::from(t.await.unwrap());
        }
        assert_eq!(got, 5, "{backend:?}: {got} of 20 took one of 5 uses");
        assert_eq!(core.storage.get::<u32>("swap/uses").await.unwrap(), None);
        let absent = core
            .storage
            .update("swap/uses", |n: u32| Ok((Change::Put(n), ())))
            .await
            .unwrap();
        assert!(
            absent.is_none(),
            "{backend:?}: an absent key is not created"
        );

        core.storage.put("swap/kept", &7u32).await.unwrap();
        let refused = core
            .storage
            .update(
                "swap/kept",
                |_: u32| -> gatepass_server::Result<(Change<u32>, ())> {
                    Err(gatepass_server::Error::invalid("no"))
                },
            )
            .await;
        assert!(refused.is_err());
        assert_eq!(core.storage.get::<u32>("swap/kept").await.unwrap(), Some(7));

        // A cached value (tokens are cached on SQLite) is dropped by the
        // update, so the next read sees the new one.
        core.storage.put("token/id/swap", &1u32).await.unwrap();
        assert_eq!(
            core.storage.get::<u32>("token/id/swap").await.unwrap(),
            Some(1)
        );
        core.storage
            .update("token/id/swap", |n: u32| Ok((Change::Put(n + 1), ())))
            .await
            .unwrap();
        assert_eq!(
            core.storage.get::<u32>("token/id/swap").await.unwrap(),
            Some(2),
            "{backend:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_reads_past_the_cache_what_another_server_wrote() {
    use gatepass_server::storage::Change;
    let (a, b) = Server::start_pair().await;
    // Policies are cached on every backend: A holds 1 in its cache...
    a.core.storage.put("policy/swap", &1u32).await.unwrap();
    assert_eq!(
        a.core.storage.get::<u32>("policy/swap").await.unwrap(),
        Some(1)
    );
    // ...when B changes the value.
    b.core.storage.put("policy/swap", &10u32).await.unwrap();
    // A's update works on B's value, not its cached one, and A reads its
    // own result at once.
    let seen = a
        .core
        .storage
        .update("policy/swap", |n: u32| Ok((Change::Put(n + 1), n)))
        .await
        .unwrap();
    assert_eq!(seen, Some(10));
    assert_eq!(
        a.core.storage.get::<u32>("policy/swap").await.unwrap(),
        Some(11)
    );
    // Two servers incrementing at once lose nothing.
    let mut tasks = Vec::new();
    for n in 0..30 {
        let core = if n % 2 == 0 {
            a.core.clone()
        } else {
            b.core.clone()
        };
        tasks.push(tokio::spawn(async move {
            core.storage
                .update("policy/swap", |n: u32| Ok((Change::Put(n + 1), ())))
                .await
                .unwrap()
                .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        b.core.storage.get::<u32>("policy/swap").await.unwrap(),
        Some(41)
    );
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
        token: None,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_server_wakes_the_other_and_drops_its_cached_copy() {
    use std::time::Duration;
    let (a, b) = Server::start_pair().await;
    let mut changes = b.core.storage.subscribe();
    // B listens for A's announcements from shortly after it opened: wait
    // until one gets through.
    b.hears(&a).await;

    // B reads a policy and caches it...
    a.core.storage.put("policy/shared", &1u32).await.unwrap();
    assert_eq!(
        b.core.storage.get::<u32>("policy/shared").await.unwrap(),
        Some(1)
    );
    changes.borrow_and_update();
    // ...A changes it: B's long-polls wake, and B reads the new value at
    // once, not its cached copy for up to the cache's time limit.
    a.core.storage.put("policy/shared", &2u32).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), changes.changed())
        .await
        .expect("A's change wakes B's waiters")
        .unwrap();
    assert_eq!(
        b.core.storage.get::<u32>("policy/shared").await.unwrap(),
        Some(2)
    );
}

/// A fleet of 100,000 hosts writes its bookkeeping (last-seen times once a
/// minute each, an acknowledgement per host per change) over a thousand
/// times a second; none of those writes may wake the long-polls, here or
/// on another server, while any other change still does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosts_last_seen_touch_wakes_no_poll_on_either_server() {
    use std::time::Duration;
    let (a, b) = Server::start_pair().await;
    let mut here = a.core.storage.subscribe();
    let mut there = b.core.storage.subscribe();
    // B listens for A's announcements from shortly after it opened: wait
    // until one gets through.
    let mut heard = false;
    for i in 0..50u32 {
        there.borrow_and_update();
        a.core.storage.put("policy/warm-up", &i).await.unwrap();
        if tokio::time::timeout(Duration::from_millis(200), there.changed())
            .await
            .is_ok()
        {
            heard = true;
            break;
        }
    }
    assert!(heard, "B never heard of a change A made");
    tokio::time::sleep(Duration::from_millis(200)).await;
    here.borrow_and_update();
    there.borrow_and_update();

    for i in 0..20u32 {
        a.core
            .storage
            .put(&format!("hosts/host/h-{i}"), &json!({ "last_seen": i }))
            .await
            .unwrap();
        // What is kept beside the record: its last-seen time, the state
        // it acknowledged.
        let beside = [
            (
                format!("hosts/seen/h-{i}"),
                json!({ "time": i }),
                format!("hosts/host/h-{i}"),
            ),
            (
                format!("hosts/applied/h-{i}"),
                json!({ "index": i }),
                format!("hosts/host/h-{i}"),
            ),
        ];
        assert_eq!(
            a.core.storage.put_beside(&beside).await.unwrap(),
            [true, true]
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!here.has_changed().unwrap(), "a touch woke A's polls");
    assert!(!there.has_changed().unwrap(), "a touch woke B's polls");

    // Any other change still wakes both.
    a.core.storage.put("policy/touched", &1u32).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), there.changed())
        .await
        .expect("A's change wakes B's waiters")
        .unwrap();
    assert!(
        here.has_changed().unwrap(),
        "A's own change wakes A's polls"
    );
}
