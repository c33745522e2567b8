//! The inventory of issued certificates (`LIST certs`, `certs/<serial>`),
//! revocation by serial number, key ID or public key (`revoke`), and the
//! OpenSSH KRL of the revoked serials not yet expired and every revoked key
//! ID and key (`krl`). Vault has neither; hosts point sshd's RevokedKeys at
//! the KRL.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use ssh_key::certificate::CertType;
use ssh_key::{Certificate, PublicKey};

use super::issuers::{self, Issuer};
use super::krl::{CaRevocations, Krl};
use crate::error::{Error, Result};
use crate::mounts::Mount;
use crate::state::Core;
use crate::storage::Change;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertRecord {
    pub serial: u64,
    pub key_id: String,
    pub principals: Vec<String>,
    pub cert_type: String,
    pub valid_after: u64,
    pub valid_before: u64,
    pub issuer_id: String,
    pub role: String,
    pub requested_by: String,
    pub public_key: String,
    pub fingerprint: String,
    pub revoked_at: Option<i64>,
}

impl CertRecord {
    pub fn new(cert: &Certificate, issuer: &Issuer, role: &str, requested_by: &str) -> CertRecord {
        let pk = PublicKey::from(cert.public_key().clone());
        CertRecord {
            serial: cert.serial(),
            key_id: cert.key_id().to_string(),
            principals: cert.valid_principals().to_vec(),
            cert_type: match cert.cert_type() {
                CertType::User => "user".into(),
                CertType::Host => "host".into(),
            },
            valid_after: cert.valid_after(),
            valid_before: cert.valid_before(),
            issuer_id: issuer.id.clone(),
            role: role.to_string(),
            requested_by: requested_by.to_string(),
            public_key: pk.to_openssh().unwrap_or_default(),
            fingerprint: issuers::fingerprint(&pk),
            revoked_at: None,
        }
    }
}

/// Serial numbers as Vault prints them: lower-case hex without padding.
pub fn serial_hex(s: u64) -> String {
    format!("{s:x}")
}

pub fn parse_serial(text: &str) -> Result<u64> {
    let t = text.trim().trim_start_matches("0x").replace(':', "");
    u64::from_str_radix(&t, 16).map_err(|_| {
        Error::invalid(format!(
            "serial_number {text:?} is not a hexadecimal serial number"
        ))
    })
}

fn cert_key(m: &Mount, serial: u64) -> String {
    format!("{}cert/{serial:016x}", m.data_prefix())
}

/// The expiry index of the inventory, across mounts, by which retention
/// finds expired certificates without reading the others:
/// `cert-exp/<valid_before>/<mount uuid>/<serial>`, times and serials in
/// fixed-width hex so that keys sort by time.
const EXPIRY_PREFIX: &str = "cert-exp/";

fn expiry_key(valid_before: u64, mount_uuid: &str, serial: u64) -> String {
    format!("{EXPIRY_PREFIX}{valid_before:016x}/{mount_uuid}/{serial:016x}")
}

/// The search indexes of a mount's inventory, written with each record:
/// `cert-kid/<key ID>/<serial>` and `cert-pr/<principal>/<serial>` under
/// the mount's data, the text in hex (any byte may be in it, `/` too, and
/// hex keeps both the byte order and prefixes, so a key ID's prefix is a
/// range of keys) and the serial in fixed-width hex (newest last). A
/// search reads a page of index keys and then only the records on it.
const KEY_ID_INDEX: &str = "cert-kid/";
const PRINCIPAL_INDEX: &str = "cert-pr/";

fn index_base(m: &Mount, index: &str) -> String {
    format!("{}{index}", m.data_prefix())
}

/// The index keys of one certificate (under the mount `data_prefix`).
fn index_keys(data_prefix: &str, rec: &CertRecord) -> Vec<String> {
    let mut keys = vec![format!(
        "{data_prefix}{KEY_ID_INDEX}{}/{:016x}",
        hex::encode(&rec.key_id),
        rec.serial
    )];
    for p in &rec.principals {
        keys.push(format!(
            "{data_prefix}{PRINCIPAL_INDEX}{}/{:016x}",
            hex::encode(p),
            rec.serial
        ));
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Records a new certificate with its expiry and search index entries;
/// false when its serial is already taken (the caller then signs again
/// with another serial).
pub async fn record(core: &Core, m: &Mount, rec: &CertRecord) -> Result<bool> {
    let value = serde_json::to_value(rec).map_err(|e| Error::internal(e.to_string()))?;
    let mut items = vec![(cert_key(m, rec.serial), value)];
    // A certificate valid for ever never expires out of the inventory.
    if rec.valid_before != u64::MAX {
        items.push((expiry_key(rec.valid_before, &m.uuid, rec.serial), json!({})));
    }
    for k in index_keys(&m.data_prefix(), rec) {
        items.push((k, json!({})));
    }
    core.storage.put_many(&items, true).await
}

/// What an inventory search looks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Search {
    /// Every certificate of the mount.
    All,
    /// Certificates whose key ID starts with this text.
    KeyIdPrefix(String),
    /// Certificates with this principal.
    Principal(String),
}

/// One page of a search, newest (highest serial) first.
#[derive(Clone, Debug, Default)]
pub struct SearchPage {
    pub certs: Vec<CertRecord>,
    /// Where the next page starts (given back as `after`); None on the
    /// last page.
    pub next: Option<String>,
}

/// Most certificates one page holds.
pub const MAX_PAGE: usize = 1000;

/// A page of the mount's certificates matching `search`, newest first,
/// after the cursor `after` of the page before. Reads the page's index
/// keys and its records, never the rest of the inventory.
pub async fn search(
    core: &Core,
    m: &Mount,
    search: &Search,
    after: Option<&str>,
    limit: usize,
) -> Result<SearchPage> {
    let limit = limit.clamp(1, MAX_PAGE);
    // The range of keys holding the matches, and where a cursor is
    // relative to.
    let (base, from, to) = match search {
        Search::All => {
            let base = format!("{}cert/", m.data_prefix());
            let to = format!("{}cert0", m.data_prefix());
            (base.clone(), base, to)
        }
        Search::KeyIdPrefix(q) => {
            let base = index_base(m, KEY_ID_INDEX);
            let from = format!("{base}{}", hex::encode(q));
            // Every key whose hex text starts with the prefix's ('g' is
            // past the hex digits and the `/` after them).
            (base, from.clone(), format!("{from}g"))
        }
        Search::Principal(p) => {
            let base = index_base(m, PRINCIPAL_INDEX);
            let from = format!("{base}{}/", hex::encode(p));
            let to = format!("{base}{}0", hex::encode(p));
            (base, from, to)
        }
    };
    let to = match after {
        None => to,
        Some(c) => {
            if c.is_empty() || !c.bytes().all(|b| b.is_ascii_hexdigit() || b == b'/') {
                return Err(Error::invalid(format!(
                    "after {c:?} is not a cursor this list gave"
                )));
            }
            // The next page holds what sorts before the last one shown.
            std::cmp::min(to, format!("{base}{c}"))
        }
    };
    let keys = core
        .storage
        .keys_between_desc(&from, &to, limit as i64 + 1)
        .await?;
    let mut page = SearchPage::default();
    for k in keys.iter().take(limit) {
        let serial = k
            .rsplit('/')
            .next()
            .and_then(|s| u64::from_str_radix(s, 16).ok());
        // An index entry whose certificate went (retention removes both,
        // but not in one step) is passed over.
        if let Some(rec) = match serial {
            Some(s) => get(core, m, s).await?,
            None => None,
        } {
            page.certs.push(rec);
        }
    }
    if keys.len() > limit {
        page.next = keys
            .get(limit - 1)
            .and_then(|k| k.strip_prefix(&base))
            .map(str::to_string);
    }
    Ok(page)
}

/// How many certificates the mount's inventory holds.
pub async fn count(core: &Core, m: &Mount) -> Result<u64> {
    let dp = m.data_prefix();
    core.storage
        .count_between(&format!("{dp}cert/"), &format!("{dp}cert0"))
        .await
}

/// Set once every certificate recorded before the search indexes existed
/// has its entries.
const SEARCH_INDEX_DONE: &str = "ssh/migrated/cert-search-index";

/// Gives the certificates recorded before the search indexes existed their
/// entries, once per database (at start, before the server serves): a
/// scan of the mounts' data, a page at a time.
pub async fn index_for_search(core: &Core) -> Result<u64> {
    if core
        .storage
        .get::<Value>(SEARCH_INDEX_DONE)
        .await?
        .is_some()
    {
        return Ok(0);
    }
    let mut indexed = 0;
    let mut from = "mount/".to_string();
    loop {
        let keys = core.storage.keys_between(&from, "mount0", PAGE).await?;
        let mut items = Vec::new();
        for k in &keys {
            // mount/<uuid>/cert/<16 hex>
            let Some((uuid, serial)) = k
                .strip_prefix("mount/")
                .and_then(|r| r.split_once("/cert/"))
            else {
                continue;
            };
            if serial.len() != 16 || serial.contains('/') || uuid.contains('/') {
                continue;
            }
            if let Some(rec) = core.storage.get::<CertRecord>(k).await? {
                indexed += 1;
                for key in index_keys(&format!("mount/{uuid}/"), &rec) {
                    items.push((key, json!({})));
                }
            }
        }
        if !items.is_empty() {
            core.storage.put_many(&items, false).await?;
        }
        match keys.last() {
            // The next key after `last` (keys are printable ASCII).
            Some(last) if keys.len() as i64 == PAGE => from = format!("{last}\u{1}"),
            _ => break,
        }
    }
    core.storage.put(SEARCH_INDEX_DONE, &json!({})).await?;
    Ok(indexed)
}

/// Set once every certificate recorded before the expiry index existed
/// has its entry.
const INDEX_DONE: &str = "retention/cert-expiry-index";

/// Keys read per step of retention's scans.
const PAGE: i64 = 1000;

/// Removes from the inventory the certificates that expired before
/// `before`, and from revocation lists the serials whose certificates did
/// (key IDs and keys stay); returns how many certificates went. Their KRLs do not
/// change: a KRL leaves out what has expired already.
pub async fn remove_expired(core: &Core, before: i64) -> Result<u64> {
    index_older_records(core).await?;
    let before = before.max(0) as u64;
    let end = format!("{EXPIRY_PREFIX}{before:016x}/");
    let mut removed = 0;
    loop {
        let due = core.storage.keys_between(EXPIRY_PREFIX, &end, PAGE).await?;
        let mut doomed = Vec::with_capacity(due.len() * 2);
        for k in &due {
            // cert-exp/<16 hex>/<uuid>/<16 hex>
            let rest = k.get(EXPIRY_PREFIX.len() + 17..).unwrap_or_default();
            if let Some((uuid, serial)) = rest.rsplit_once('/') {
                let key = format!("mount/{uuid}/cert/{serial}");
                // Its search index entries go with it.
                if let Some(rec) = core.storage.get::<CertRecord>(&key).await? {
                    doomed.extend(index_keys(&format!("mount/{uuid}/"), &rec));
                }
                doomed.push(key);
                removed += 1;
            }
            doomed.push(k.clone());
        }
        if !doomed.is_empty() {
            core.storage.delete_many(&doomed).await?;
        }
        if (due.len() as i64) < PAGE {
            break;
        }
    }
    for m in crate::mounts::all(core).await? {
        if m.kind == "ssh" {
            prune_revocations(core, &m, before).await?;
        }
    }
    Ok(removed)
}

/// Drops from a mount's revocation list what expired before `before`,
/// keeping its version and date (its KRL's bytes stay the same).
async fn prune_revocations(core: &Core, m: &Mount, before: u64) -> Result<()> {
    let key = revocations_key(m);
    let stale = |rev: &Revocations| {
        rev.serials.iter().any(|(_, _, exp)| *exp < before)
            || rev.retired.iter().any(|r| r.until < before)
    };
    match core.storage.get::<Revocations>(&key).await? {
        Some(rev) if stale(&rev) => {}
        _ => return Ok(()),
    }
    core.storage
        .update(&key, |mut rev: Revocations| {
            rev.serials.retain(|(_, _, exp)| *exp >= before);
            rev.retired.retain(|r| r.until >= before);
            Ok((Change::Put(rev), ()))
        })
        .await?;
    Ok(())
}

/// Gives the certificates recorded before the expiry index existed their
/// entries, once (a scan of the mounts' data, a page at a time).
async fn index_older_records(core: &Core) -> Result<()> {
    if core.storage.get::<Value>(INDEX_DONE).await?.is_some() {
        return Ok(());
    }
    let mut from = "mount/".to_string();
    loop {
        let keys = core.storage.keys_between(&from, "mount0", PAGE).await?;
        let mut items = Vec::new();
        for k in &keys {
            // mount/<uuid>/cert/<16 hex>
            let Some((uuid, serial)) = k
                .strip_prefix("mount/")
                .and_then(|r| r.split_once("/cert/"))
            else {
                continue;
            };
            if serial.len() != 16 || serial.contains('/') {
                continue;
            }
            if let (Ok(serial), Some(rec)) = (
                u64::from_str_radix(serial, 16),
                core.storage.get::<CertRecord>(k).await?,
            ) {
                if rec.valid_before != u64::MAX {
                    items.push((expiry_key(rec.valid_before, uuid, serial), json!({})));
                }
            }
        }
        if !items.is_empty() {
            core.storage.put_many(&items, false).await?;
        }
        match keys.last() {
            // The next key after `last` (keys are printable ASCII).
            Some(last) if keys.len() as i64 == PAGE => from = format!("{last}\u{1}"),
            _ => break,
        }
    }
    core.storage.put(INDEX_DONE, &json!({})).await
}

pub async fn get(core: &Core, m: &Mount, serial: u64) -> Result<Option<CertRecord>> {
    core.storage.get(&cert_key(m, serial)).await
}

pub async fn list(core: &Core, m: &Mount) -> Result<Vec<String>> {
    let prefix = format!("{}cert/", m.data_prefix());
    Ok(core
        .storage
        .list(&prefix)
        .await?
        .iter()
        .filter_map(|k| u64::from_str_radix(k, 16).ok())
        .map(serial_hex)
        .collect())
}

/// Every certificate with exactly this key ID, through the index.
async fn with_key_id(core: &Core, m: &Mount, id: &str) -> Result<Vec<CertRecord>> {
    let base = index_base(m, KEY_ID_INDEX);
    let from = format!("{base}{}/", hex::encode(id));
    let to = format!("{base}{}0", hex::encode(id));
    let mut out = Vec::new();
    for k in core.storage.keys_between(&from, &to, i64::MAX).await? {
        let serial = k
            .rsplit('/')
            .next()
            .and_then(|s| u64::from_str_radix(s, 16).ok());
        if let Some(rec) = match serial {
            Some(s) => get(core, m, s).await?,
            None => None,
        } {
            out.push(rec);
        }
    }
    Ok(out)
}

/// The most certificates [`issued_since`] counts; past it the count says
/// only "at least this many", so the answer stays cheap on a busy day.
pub const ISSUED_COUNT_LIMIT: i64 = 10_000;

/// How many certificates the mount issued at or after `since` (Unix
/// seconds), up to [`ISSUED_COUNT_LIMIT`], and whether there were more.
///
/// A serial carries its signing second in its high bits (see
/// `ssh::next_serial`) and the inventory's keys are the serials in
/// fixed-width hex, so the certificates signed since a time are one range
/// of keys: counting them reads keys only, never a certificate's record,
/// and costs the signing path nothing.
pub async fn issued_since(core: &Core, m: &Mount, since: i64) -> Result<(u64, bool)> {
    let prefix = format!("{}cert/", m.data_prefix());
    let first = (since.max(0) as u64) << 30;
    let from = format!("{prefix}{first:016x}");
    // `g` sorts after every lower-case hex digit: the range ends past the
    // last serial.
    let to = format!("{prefix}g");
    let keys = core
        .storage
        .keys_between(&from, &to, ISSUED_COUNT_LIMIT + 1)
        .await?;
    let n = keys.len() as i64;
    Ok((n.min(ISSUED_COUNT_LIMIT) as u64, n > ISSUED_COUNT_LIMIT))
}

async fn all(core: &Core, m: &Mount) -> Result<Vec<CertRecord>> {
    let mut out = Vec::new();
    for k in core
        .storage
        .keys_with_prefix(&format!("{}cert/", m.data_prefix()))
        .await?
    {
        if let Some(r) = core.storage.get::<CertRecord>(&k).await? {
            out.push(r);
        }
    }
    Ok(out)
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Revocations {
    version: u64,
    /// When the list last changed: the KRL's date, so the same list gives
    /// the same bytes (hosts compare states by content).
    #[serde(default)]
    updated: i64,
    /// (issuer ID, serial, valid_before)
    serials: Vec<(String, u64, u64)>,
    /// (key ID, valid_before of the latest such certificate when it was
    /// revoked). Kept for good, as keys are: a certificate signed later
    /// with the same key ID (by a server that had not heard of the
    /// revocation yet) is revoked too, and signing refuses the key ID.
    key_ids: Vec<(String, u64)>,
    /// Plain public keys revoked outright, kept for good.
    keys: Vec<String>,
    /// Deleted issuers, whose revocations (made before or after they went)
    /// the KRL still lists: a host that trusts a deleted CA by hand (not
    /// through hostd) must go on refusing its revoked certificates until
    /// they expire.
    #[serde(default)]
    retired: Vec<RetiredIssuer>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct RetiredIssuer {
    id: String,
    /// Its OpenSSH public key line.
    public_key: String,
    /// When the last certificate it can have signed expires; the entry is
    /// dropped then.
    until: u64,
}

/// Keeps a deleted issuer's revocations in the mount's KRL, those made
/// before and after it went, until every certificate it can have signed
/// has expired. Called before the issuer is deleted, so a failure here
/// leaves it in place.
pub async fn retire_issuer(core: &Core, m: &Mount, issuer: &Issuer, now: i64) -> Result<()> {
    // Records from before the expiry index get their entries first (once).
    index_older_records(core).await?;
    // The latest expiry of any certificate in the inventory (the expiry
    // index's last key): no certificate of this issuer outlives it.
    let last = core
        .storage
        .keys_between_desc(EXPIRY_PREFIX, &format!("{EXPIRY_PREFIX}g"), 1)
        .await?;
    let until = last
        .first()
        .and_then(|k| k.get(EXPIRY_PREFIX.len()..EXPIRY_PREFIX.len() + 16))
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .unwrap_or(0);
    if until <= now.max(0) as u64 {
        return Ok(());
    }
    let retired = RetiredIssuer {
        id: issuer.id.clone(),
        public_key: issuer.public_key.trim().to_string(),
        until,
    };
    let key = revocations_key(m);
    core.storage
        .put_if_absent(&key, &Revocations::default())
        .await?;
    core.storage
        .update(&key, |mut rev: Revocations| {
            rev.retired.retain(|r| r.id != retired.id);
            rev.retired.push(retired.clone());
            Ok((Change::Put(rev), ()))
        })
        .await?;
    Ok(())
}

/// Refuses a certificate that would be born revoked: the mount's
/// revocations name its key ID or its key. Read on every signing, from the
/// storage's cache.
pub async fn refuse_revoked(core: &Core, m: &Mount, key_id: &str, key: &PublicKey) -> Result<()> {
    let Some(rev) = core
        .storage
        .get_shared::<Revocations>(&revocations_key(m))
        .await?
    else {
        return Ok(());
    };
    if rev.key_ids.iter().any(|(k, _)| k == key_id) {
        return Err(Error::invalid(format!(
            "key_id {key_id:?} is revoked in this mount; hosts refuse every certificate with it"
        )));
    }
    if !rev.keys.is_empty() {
        // Stored as `to_openssh` wrote them: the type and the base64 of
        // the key are the first two fields, the comment (if any) after.
        let ours = openssh_fields(key)?;
        if rev.keys.iter().any(|k| Lifted::matches_key(&ours, k)) {
            return Err(Error::invalid(
                "public_key is revoked in this mount; hosts refuse every certificate for it",
            ));
        }
    }
    Ok(())
}

/// One revocation, as it enters the list.
enum Revoked {
    /// (issuer ID, serial, valid_before)
    Serial(String, u64, u64),
    /// (key ID, valid_before of the latest such certificate)
    KeyId(String, u64),
    /// A public key in OpenSSH form.
    Key(String),
}

impl Revocations {
    fn add(&mut self, r: &Revoked) {
        match r {
            Revoked::Serial(issuer, serial, valid_before) => {
                if !self
                    .serials
                    .iter()
                    .any(|(i, s, _)| s == serial && i == issuer)
                {
                    self.serials.push((issuer.clone(), *serial, *valid_before));
                }
            }
            Revoked::KeyId(id, latest) => {
                self.key_ids.retain(|(k, _)| k != id);
                self.key_ids.push((id.clone(), *latest));
            }
            Revoked::Key(text) => {
                if !self.keys.iter().any(|k| k == text) {
                    self.keys.push(text.clone());
                }
            }
        }
    }
}

fn revocations_key(m: &Mount) -> String {
    format!("{}revocations", m.data_prefix())
}

/// Revokes by one of `serial_number`, `key_id` or `public_key`; returns the
/// serials of the certificates in the inventory that it covers.
pub async fn revoke(
    core: &Core,
    m: &Mount,
    serial: Option<String>,
    key_id: Option<String>,
    public_key: Option<String>,
    now: i64,
) -> Result<Vec<String>> {
    let given = [serial.is_some(), key_id.is_some(), public_key.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if given != 1 {
        return Err(Error::invalid(
            "give exactly one of serial_number, key_id or public_key",
        ));
    }
    let mut hit: Vec<CertRecord> = Vec::new();
    // What this revocation adds, applied below to the list as stored.
    let add: Revoked;
    if let Some(s) = serial {
        let serial = parse_serial(&s)?;
        let rec = get(core, m, serial).await?.ok_or_else(|| {
            Error::invalid(format!(
                "no certificate with serial number {s} was issued by this mount"
            ))
        })?;
        add = Revoked::Serial(rec.issuer_id.clone(), serial, rec.valid_before);
        hit.push(rec);
    } else if let Some(id) = key_id {
        super::principal::check_key_id(&id)?;
        hit = with_key_id(core, m, &id).await?;
        let latest = hit.iter().map(|r| r.valid_before).max().ok_or_else(|| {
            Error::invalid(format!(
                "no certificate with key_id {id:?} was issued by this mount"
            ))
        })?;
        add = Revoked::KeyId(id, latest);
    } else if let Some(pk) = public_key {
        let key = super::sign::parse_public_key(&pk)?;
        let text = key
            .to_openssh()
            .map_err(|e| Error::internal(e.to_string()))?;
        let fp = issuers::fingerprint(&key);
        hit = all(core, m)
            .await?
            .into_iter()
            .filter(|r| r.fingerprint == fp)
            .collect();
        add = Revoked::Key(text);
    } else {
        return Err(Error::invalid(
            "give exactly one of serial_number, key_id or public_key",
        ));
    }
    // Changed in place: two revocations at once, on one server or two,
    // must both reach the list (and each bump its version).
    let key = revocations_key(m);
    if core.storage.get_exact::<Revocations>(&key).await?.is_none() {
        core.storage
            .put_if_absent(&key, &Revocations::default())
            .await?;
    }
    core.storage
        .update(&key, |mut rev: Revocations| {
            rev.add(&add);
            rev.version += 1;
            rev.updated = now;
            Ok((Change::Put(rev), ()))
        })
        .await?
        .ok_or_else(|| Error::internal("the revocation list vanished"))?;
    for mut r in hit.clone() {
        if r.revoked_at.is_none() {
            r.revoked_at = Some(now);
            core.storage.put(&cert_key(m, r.serial), &r).await?;
        }
    }
    Ok(hit.iter().map(|r| serial_hex(r.serial)).collect())
}

/// Lifts a key-ID or key revocation (one of `key_id`, `public_key`):
/// signing takes the key ID or key again, and the KRL stops naming it.
/// The certificates it revoked stay revoked, by serial, until they
/// expire; returns their serials. Without this a key ID revoked once
/// (a `key_id_format` of `{{token_display_name}}` names a user) would lock
/// its user out of the mount for good.
pub async fn lift(
    core: &Core,
    m: &Mount,
    key_id: Option<String>,
    public_key: Option<String>,
    now: i64,
) -> Result<Vec<String>> {
    let lifted = match (key_id, public_key) {
        (Some(id), None) => {
            super::principal::check_key_id(&id)?;
            Lifted::KeyId(id)
        }
        (None, Some(pk)) => {
            let key = super::sign::parse_public_key(&pk)?;
            Lifted::Key(issuers::fingerprint(&key), openssh_fields(&key)?)
        }
        _ => return Err(Error::invalid("give exactly one of key_id or public_key")),
    };
    let key = revocations_key(m);
    let rev: Revocations = core.storage.get_exact(&key).await?.unwrap_or_default();
    if !lifted.in_list(&rev) {
        return Err(Error::invalid(format!(
            "{} is not revoked in this mount",
            lifted.name()
        )));
    }
    // The certificates it covers are read before the list changes, and
    // again after: one signed meanwhile by a server that had not heard of
    // the revocation yet was revoked by it, and stays so.
    let mut kept = lifted.certificates(core, m, now).await?;
    serials_revoked(core, &key, &kept, now, |rev| lifted.drop_from(rev)).await?;
    let later: Vec<CertRecord> = lifted
        .certificates(core, m, now)
        .await?
        .into_iter()
        .filter(|r| !kept.iter().any(|k| k.serial == r.serial))
        .collect();
    if !later.is_empty() {
        serials_revoked(core, &key, &later, now, |_| ()).await?;
        kept.extend(later);
    }
    for mut r in kept.clone() {
        if r.revoked_at.is_none() {
            r.revoked_at = Some(now);
            core.storage.put(&cert_key(m, r.serial), &r).await?;
        }
    }
    Ok(kept.iter().map(|r| serial_hex(r.serial)).collect())
}

/// Adds the serials of `certs` to the list, with `change` made in the
/// same update.
async fn serials_revoked(
    core: &Core,
    key: &str,
    certs: &[CertRecord],
    now: i64,
    change: impl Fn(&mut Revocations) + Send + Sync,
) -> Result<()> {
    core.storage
        .update(key, |mut rev: Revocations| {
            change(&mut rev);
            for r in certs {
                rev.add(&Revoked::Serial(
                    r.issuer_id.clone(),
                    r.serial,
                    r.valid_before,
                ));
            }
            rev.version += 1;
            rev.updated = now;
            Ok((Change::Put(rev), ()))
        })
        .await?
        .ok_or_else(|| Error::internal("the revocation list vanished"))
}

/// The type and base64 of an OpenSSH key line, without its comment: how
/// revoked keys are compared.
fn openssh_fields(key: &PublicKey) -> Result<String> {
    let text = key
        .to_openssh()
        .map_err(|e| Error::internal(e.to_string()))?;
    Ok(text
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" "))
}

/// What [`lift`] lifts.
enum Lifted {
    KeyId(String),
    /// The key's fingerprint and its [`openssh_fields`].
    Key(String, String),
}

impl Lifted {
    fn name(&self) -> String {
        match self {
            Lifted::KeyId(id) => format!("key_id {id:?}"),
            Lifted::Key(fp, _) => format!("public_key {fp}"),
        }
    }

    fn matches_key(fields: &str, stored: &str) -> bool {
        stored
            .split_whitespace()
            .take(2)
            .eq(fields.split_whitespace())
    }

    fn in_list(&self, rev: &Revocations) -> bool {
        match self {
            Lifted::KeyId(id) => rev.key_ids.iter().any(|(k, _)| k == id),
            Lifted::Key(_, fields) => rev.keys.iter().any(|k| Lifted::matches_key(fields, k)),
        }
    }

    fn drop_from(&self, rev: &mut Revocations) {
        match self {
            Lifted::KeyId(id) => rev.key_ids.retain(|(k, _)| k != id),
            Lifted::Key(_, fields) => rev.keys.retain(|k| !Lifted::matches_key(fields, k)),
        }
    }

    /// The certificates in the inventory it covers that have not expired.
    async fn certificates(&self, core: &Core, m: &Mount, now: i64) -> Result<Vec<CertRecord>> {
        let all_of = match self {
            Lifted::KeyId(id) => with_key_id(core, m, id).await?,
            Lifted::Key(fp, _) => all(core, m)
                .await?
                .into_iter()
                .filter(|r| r.fingerprint == *fp)
                .collect(),
        };
        let now = now.max(0) as u64;
        Ok(all_of
            .into_iter()
            .filter(|r| r.valid_before > now)
            .collect())
    }
}

/// The KRL for this mount at `now`: revoked serials per issuer (expired
/// ones dropped, since sshd refuses those anyway), revoked key IDs per
/// issuer and revoked keys (all kept).
pub async fn krl(core: &Core, m: &Mount, now: i64) -> Result<Vec<u8>> {
    Ok(krl_until(core, m, now).await?.0)
}

/// The KRL at `now` and the first second at which it changes by itself (a
/// revoked serial's certificate expires and the entry is dropped; `i64::MAX` when
/// none will): until then, and unless the revocations change, it is the
/// same, so hosts' states built on it need no look at the clock.
pub async fn krl_until(core: &Core, m: &Mount, now: i64) -> Result<(Vec<u8>, i64)> {
    // Exact, not from the read cache: what hosts are handed is what is
    // revoked now, on whichever server they ask.
    let rev: Revocations = core
        .storage
        .get_exact(&revocations_key(m))
        .await?
        .unwrap_or_default();
    let now_u = now.max(0) as u64;
    let mut cas = Vec::new();
    for issuer in issuers::all(core, m).await? {
        cas.push((issuer.id.clone(), issuer.public()?));
    }
    for r in rev.retired.iter().filter(|r| r.until > now_u) {
        if !cas.iter().any(|(id, _)| *id == r.id) {
            let key = PublicKey::from_openssh(&r.public_key)
                .map_err(|e| Error::internal(format!("retired CA key {} unreadable: {e}", r.id)))?;
            cas.push((r.id.clone(), key));
        }
    }
    let mut certs = Vec::new();
    for (id, ca) in cas {
        let serials: Vec<u64> = rev
            .serials
            .iter()
            .filter(|(i, _, exp)| *i == id && *exp > now_u)
            .map(|(_, s, _)| *s)
            .collect();
        // Every key ID, expired certificates or not: one signed later with
        // the same ID is revoked as well.
        let key_ids: Vec<String> = rev.key_ids.iter().map(|(k, _)| k.clone()).collect();
        if !serials.is_empty() || !key_ids.is_empty() {
            certs.push((ca, CaRevocations { serials, key_ids }));
        }
    }
    let keys = rev
        .keys
        .iter()
        .filter_map(|k| PublicKey::from_openssh(k).ok())
        .collect();
    let until = rev
        .serials
        .iter()
        .map(|(_, _, exp)| *exp)
        .chain(rev.retired.iter().map(|r| r.until))
        .filter(|exp| *exp > now_u)
        .min()
        .map_or(i64::MAX, |exp| i64::try_from(exp).unwrap_or(i64::MAX));
    let bytes = Krl {
        version: rev.version,
        generated: rev.updated.max(0) as u64,
        comment: format!("gatepass {}", m.path),
        certs,
        keys,
    }
    .to_bytes()?;
    Ok((bytes, until))
}
