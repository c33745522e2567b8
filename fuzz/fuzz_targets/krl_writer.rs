//! The KRL writer's input (serials, key IDs, comments as revocations hold
//! them): writing never panics, and every KRL it writes reads back with
//! each serial and key ID revoked.
#![no_main]

use arbitrary::Arbitrary;
use gatepass_krl::parse;
use gatepass_server::ssh::krl::{CaRevocations, Krl};
use libfuzzer_sys::fuzz_target;
use ssh_key::private::Ed25519Keypair;
use ssh_key::PublicKey;

#[derive(Arbitrary, Debug)]
struct Input {
    version: u64,
    generated: u64,
    comment: String,
    serials: Vec<u64>,
    key_ids: Vec<String>,
    second_ca: Option<Vec<u64>>,
}

fn ca(seed: u8) -> PublicKey {
    let pair = Ed25519Keypair::from_seed(&[seed; 32]);
    PublicKey::from(pair.public)
}

fuzz_target!(|input: Input| {
    let mut certs = vec![(
        ca(1),
        CaRevocations {
            serials: input.serials.clone(),
            key_ids: input.key_ids.clone(),
        },
    )];
    if let Some(more) = &input.second_ca {
        certs.push((
            ca(2),
            CaRevocations {
                serials: more.clone(),
                key_ids: vec![],
            },
        ));
    }
    let krl = Krl {
        version: input.version,
        generated: input.generated,
        comment: input.comment.clone(),
        certs,
        keys: vec![],
    };
    let Ok(bytes) = krl.to_bytes() else { return };
    let parsed = parse(&bytes).expect("a KRL gatepass wrote reads back");
    let first = parsed
        .certs
        .iter()
        .find(|c| c.ca_key.as_deref() == Some(&ca(1).to_bytes().expect("blob")[..]));
    for s in input.serials.iter().filter(|s| **s != 0) {
        let c = first.expect("a section for the CA with serials");
        assert!(c.revokes_serial(*s), "serial {s} lost");
    }
    for id in &input.key_ids {
        let c = first.expect("a section for the CA with key IDs");
        assert!(c.key_ids.contains(id), "key ID {id:?} lost");
    }
});
