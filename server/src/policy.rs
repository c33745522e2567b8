//! Vault ACL policies: parsing (HCL or JSON), path pattern matching and the
//! combination of a token's policies into one ACL. The rules follow Vault's
//! (`vault/policy.go`, `vault/acl.go`) so that policies written for Vault grant
//! exactly the same access here.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::BitOr;
use std::str::FromStr;

use hcl::{Expression, Structure};
use serde_json::{Map, Value};

use crate::duration;
use crate::error::{Error, Result};

/// One capability a policy rule can grant on a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    Create,
    Read,
    Update,
    Delete,
    List,
    Sudo,
    Deny,
    Patch,
}

impl Capability {
    /// In the order Vault's `sys/capabilities` lists them, so responses match.
    pub const ALL: [Capability; 8] = [
        Capability::Sudo,
        Capability::Read,
        Capability::List,
        Capability::Update,
        Capability::Delete,
        Capability::Create,
        Capability::Patch,
        Capability::Deny,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Create => "create",
            Capability::Read => "read",
            Capability::Update => "update",
            Capability::Delete => "delete",
            Capability::List => "list",
            Capability::Sudo => "sudo",
            Capability::Deny => "deny",
            Capability::Patch => "patch",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Capability::Deny => 1,
            Capability::Create => 1 << 1,
            Capability::Read => 1 << 2,
            Capability::Update => 1 << 3,
            Capability::Delete => 1 << 4,
            Capability::List => 1 << 5,
            Capability::Sudo => 1 << 6,
            Capability::Patch => 1 << 7,
        }
    }
}

impl FromStr for Capability {
    type Err = Error;

    /// Names are case-sensitive, as in Vault.
    fn from_str(s: &str) -> Result<Self> {
        Capability::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| Error::invalid(format!("invalid capability {s:?}")))
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of capabilities as a bit set: cheap to copy and merge on every request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CapSet(u8);

impl CapSet {
    pub const EMPTY: CapSet = CapSet(0);
    pub const DENY: CapSet = CapSet(1);

    pub fn contains(self, cap: Capability) -> bool {
        self.0 & cap.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn insert(&mut self, cap: Capability) {
        self.0 |= cap.bit();
    }

    pub fn union(self, other: CapSet) -> CapSet {
        CapSet(self.0 | other.0)
    }

    /// The members, in Vault's reporting order.
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        Capability::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }

    /// The names as Vault's `sys/capabilities` reports them: `["deny"]` when
    /// the set is empty or denies, since both mean no access.
    pub fn names(self) -> Vec<&'static str> {
        if self.is_empty() || self.contains(Capability::Deny) {
            return vec![Capability::Deny.as_str()];
        }
        self.iter().map(Capability::as_str).collect()
    }

    /// Vault's merge of two grants for the same pattern: deny is sticky and
    /// drops everything else.
    fn merge(self, other: CapSet) -> CapSet {
        let all = self.union(other);
        if all.contains(Capability::Deny) {
            CapSet::DENY
        } else {
            all
        }
    }
}

impl BitOr for CapSet {
    type Output = CapSet;

    fn bitor(self, rhs: CapSet) -> CapSet {
        self.union(rhs)
    }
}

impl FromIterator<Capability> for CapSet {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        let mut set = CapSet::EMPTY;
        iter.into_iter().for_each(|c| set.insert(c));
        set
    }
}

impl fmt::Display for CapSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(", "))
    }
}

/// Vault's built-in `default` policy, reduced to the token endpoints gatepass
/// implements: every token may inspect, renew and revoke itself.
pub const DEFAULT_POLICY: &str = r#"# Allow tokens to look up their own properties
path "auth/token/lookup-self" {
    capabilities = ["read"]
}

# Allow tokens to renew themselves
path "auth/token/renew-self" {
    capabilities = ["update"]
}

# Allow tokens to revoke themselves
path "auth/token/revoke-self" {
    capabilities = ["update"]
}

# Allow a token to look up its own capabilities on a path
path "sys/capabilities-self" {
    capabilities = ["update"]
}
"#;

/// A parsed ACL policy: its name and its `path` rules.
///
/// Besides the capabilities, the parameter constraints
/// (`allowed_parameters`, `denied_parameters`, `required_parameters`) are
/// enforced (see [`Params`]), and so are `min_wrapping_ttl` and
/// `max_wrapping_ttl` (see [`WrappingTtls`]); `comment` is accepted so that
/// Vault policies load unchanged. The Enterprise-only
/// `mfa_methods` and `control_group` are rejected rather than ignored, since
/// ignoring them would silently drop an approval requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    /// (pattern without leading `/`, rule); deny already normalised.
    rules: Vec<(String, Perms)>,
}

impl Policy {
    /// Parses policy text: JSON when it starts with `{`, HCL otherwise.
    pub fn parse(name: &str, text: &str) -> Result<Policy> {
        let text = text.trim_start();
        let rules = if text.starts_with('{') {
            parse_json(text)?
        } else {
            parse_hcl(text)?
        };
        if rules.is_empty() {
            return Err(invalid("policy has no path rules"));
        }
        Ok(Policy {
            name: name.to_owned(),
            rules,
        })
    }

    /// The rules as (pattern, capabilities), in the order written.
    pub fn rules(&self) -> impl Iterator<Item = (&str, CapSet)> {
        self.rules.iter().map(|(p, r)| (p.as_str(), r.caps))
    }
}

fn invalid(msg: impl fmt::Display) -> Error {
    Error::invalid(format!("failed to parse policy: {msg}"))
}

/// One path rule: what it grants and the constraints on the request's
/// parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Perms {
    caps: CapSet,
    params: Params,
    wrapping: WrappingTtls,
}

/// A rule's `min_wrapping_ttl` and `max_wrapping_ttl`, in seconds (0: not
/// set). As in Vault (`AllowOperation`), either one set makes response
/// wrapping mandatory on the path: a request without `X-Vault-Wrap-TTL`,
/// or with a TTL outside the bounds, is refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct WrappingTtls {
    min: i64,
    max: i64,
}

impl WrappingTtls {
    /// Vault's merge across policies granting the same pattern: the lower
    /// minimum and the higher maximum, each where set.
    fn merge(&mut self, other: WrappingTtls) {
        if other.min > 0 && (self.min == 0 || other.min < self.min) {
            self.min = other.min;
        }
        if other.max > 0 && (self.max == 0 || other.max > self.max) {
            self.max = other.max;
        }
    }

    /// Whether a request wrapped for `ttl` seconds (None: not wrapped)
    /// passes.
    fn allow(self, ttl: Option<i64>) -> bool {
        if self.min == 0 && self.max == 0 {
            return true;
        }
        ttl.is_some_and(|t| (self.min == 0 || t >= self.min) && (self.max == 0 || t <= self.max))
    }
}

impl Perms {
    /// Vault's merge of two grants for the same pattern (`NewACL`): deny is
    /// sticky and drops everything else; otherwise capabilities add up and
    /// the parameter constraints merge (see [`Params::merge`]).
    fn merge(&mut self, other: &Perms) {
        self.caps = self.caps.merge(other.caps);
        if self.caps.contains(Capability::Deny) {
            self.params = Params::default();
            self.wrapping = WrappingTtls::default();
        } else {
            self.params.merge(&other.params);
            self.wrapping.merge(other.wrapping);
        }
    }
}

/// Parameter name (lower-cased) → the values a rule allows or denies.
type ParamMap = BTreeMap<String, Values>;

/// A rule's parameter constraints, with Vault's semantics (`AllowOperation`
/// in Vault's `acl.go`):
///
/// - They apply to reads and writes (Vault: read, create, update, patch),
///   not to list or delete.
/// - `required_parameters`: each must be present.
/// - A request without parameters passes the rest.
/// - `denied_parameters` wins over `allowed_parameters`: a `"*"` key denies
///   any parameter; a parameter with `[]` is denied with any value, with a
///   list when one of its values is in it.
/// - `allowed_parameters`: once set, a parameter not in it is refused unless
///   a `"*" = []` key allows all others; `[]` allows any value, a list only
///   those values.
/// - A value in a list matches exactly, or by prefix (`"foo-*"`), suffix
///   (`"*-bar"`) or substring (`"*mid*"`); a value of one character, `"*"`
///   included, matches only itself, as in Vault.
///
/// Where gatepass is stricter than Vault, it is about how one request value
/// is read: gatepass's endpoints read lists leniently (`"a,b"` or `["a",
/// "b"]`, items trimmed), so a value is checked in every form an endpoint
/// may read it as (see [`Readings`]). Vault compares the raw value only, so
/// that `valid_principals="alice,root"` passes an `"alice*"` constraint
/// there. And values may hold the identity templates gatepass knows (see
/// [`Template`]), which Vault compares as literal text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    /// None: not set, every parameter allowed.
    allowed: Option<ParamMap>,
    /// None: not set, no parameter denied.
    denied: Option<ParamMap>,
    /// Lower-cased names.
    required: Vec<String>,
}

impl Params {
    /// Vault's merge across policies granting the same pattern: per
    /// parameter the value lists add up, `[]` (any value) wins over a list,
    /// and a rule without constraints leaves the other's in place.
    fn merge(&mut self, other: &Params) {
        merge_maps(&mut self.allowed, other.allowed.as_ref());
        merge_maps(&mut self.denied, other.denied.as_ref());
        for name in &other.required {
            if !self.required.contains(name) {
                self.required.push(name.clone());
            }
        }
    }

    /// Whether a request with these fields passes the constraints. Fields
    /// that are null count as absent, as the endpoints read them.
    fn check(&self, data: &Map<String, Value>, who: &Identity) -> bool {
        let present: Vec<(String, &Value)> = data
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.to_lowercase(), v))
            .collect();
        let has = |name: &str| data.get(name).is_some_and(|v| !v.is_null());
        if !self.required.iter().all(|name| has(name)) {
            return false;
        }
        if present.is_empty() {
            return true;
        }
        if let Some(denied) = &self.denied {
            if denied.contains_key("*") {
                return false;
            }
            // A field the endpoints also take under another name (a login
            // role's or user's `policies` is its `token_policies`) is held
            // to the other name's denied values too.
            let denied_as = |name: &str, value: &Value| {
                denied
                    .get(name)
                    .is_some_and(|values| values.denies(value, who))
            };
            let hit = present.iter().any(|(name, value)| {
                denied_as(name, value) || alias_of(name).is_some_and(|a| denied_as(a, value))
            });
            if hit {
                return false;
            }
        }
        let Some(allowed) = &self.allowed else {
            return true;
        };
        let others_allowed = allowed.contains_key("*");
        // A field sent under its other name is held to the values allowed
        // for that name: `policies` to `token_policies`'s.
        present.iter().all(|(name, value)| {
            match allowed
                .get(name)
                .or_else(|| alias_of(name).and_then(|a| allowed.get(a)))
            {
                Some(values) => values.allows(value, who),
                None => others_allowed,
            }
        })
    }
}

/// The other name of a field that Vault's auth methods take under two
/// names (the older one, and its `token_` name since Vault 1.2).
fn alias_of(name: &str) -> Option<&'static str> {
    const PAIRS: [(&str, &str); 7] = [
        ("policies", "token_policies"),
        ("bound_cidrs", "token_bound_cidrs"),
        ("period", "token_period"),
        ("explicit_max_ttl", "token_explicit_max_ttl"),
        ("num_uses", "token_num_uses"),
        ("ttl", "token_ttl"),
        ("max_ttl", "token_max_ttl"),
    ];
    PAIRS.iter().find_map(|(old, new)| {
        if name == *old {
            Some(*new)
        } else if name == *new {
            Some(*old)
        } else {
            None
        }
    })
}

fn merge_maps(mine: &mut Option<ParamMap>, theirs: Option<&ParamMap>) {
    let Some(theirs) = theirs else {
        return;
    };
    let mine = mine.get_or_insert_with(ParamMap::new);
    for (name, values) in theirs {
        match mine.get_mut(name) {
            Some(existing) => existing.merge(values.clone()),
            None => {
                mine.insert(name.clone(), values.clone());
            }
        }
    }
}

/// A parameter map given twice in one path block, joined as Vault's HCL
/// decoder joins them: a parameter's lists are one list, so `["60"]` and
/// `[]` leave `["60"]` (not the "any value" of [`merge_maps`], which is
/// for rules of different policies).
fn join_maps(mine: &mut Option<ParamMap>, theirs: Option<ParamMap>) {
    let Some(theirs) = theirs else {
        return;
    };
    let Some(mine) = mine else {
        *mine = Some(theirs);
        return;
    };
    for (name, values) in theirs {
        match (mine.get_mut(&name), values) {
            (None, values) => {
                mine.insert(name, values);
            }
            (Some(existing @ Values::Any), values) => *existing = values,
            (Some(_), Values::Any) => {}
            (Some(Values::OneOf(list)), Values::OneOf(more)) => list.extend(more),
        }
    }
}

/// The values one parameter may (or may not) take.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Values {
    /// `[]`: any value.
    Any,
    OneOf(Vec<ValuePattern>),
}

impl Values {
    fn merge(&mut self, other: Values) {
        match (&mut *self, other) {
            (Values::Any, _) => {}
            (_, Values::Any) => *self = Values::Any,
            (Values::OneOf(mine), Values::OneOf(theirs)) => mine.extend(theirs),
        }
    }

    /// As an allowed list: every form the value may be read in is allowed.
    /// A template that cannot be filled in for this caller allows nothing.
    fn allows(&self, value: &Value, who: &Identity) -> bool {
        let Values::OneOf(patterns) = self else {
            return true;
        };
        let r = Readings::of(value);
        !r.opaque
            && r.texts
                .iter()
                .all(|t| patterns.iter().any(|p| p.matches(t, who, false)))
    }

    /// As a denied list: some form the value may be read in is denied. A
    /// template that cannot be filled in for this caller denies every value.
    ///
    /// A denied value also holds against every spelling an endpoint reads
    /// alike: in any case (policy, user and role names are taken in lower
    /// case, so `Admin` is `admin`; a value that differs only in case where
    /// case matters is refused too, the safe side), and a boolean or an
    /// integer in any of the spellings endpoints take (`0`, `f` and `FALSE`
    /// are `false`; `00` and `+0` are `0`), and a duration in any spelling
    /// the endpoints read as the same number of seconds (`1h`, `60m`,
    /// `3600s` and `3600` alike). A value that merely reads as a duration
    /// (a number) is held to a denied duration whatever the field: the safe
    /// side, as a field that takes no duration refuses such text anyway.
    fn denies(&self, value: &Value, who: &Identity) -> bool {
        let Values::OneOf(patterns) = self else {
            return true;
        };
        let texts = Readings::of(value).texts;
        let canonical = texts.iter().filter_map(|t| canonical_scalar(t));
        // The seconds each reads as where endpoints read TTLs and periods.
        let seconds: Vec<i64> = texts.iter().filter_map(|t| duration::parse(t)).collect();
        let spelled = texts
            .iter()
            .map(|t| t.to_lowercase())
            .chain(canonical)
            .any(|t| {
                patterns.iter().any(|p| {
                    p.matches_folded(&t, who) || {
                        // A boolean or integer spelled otherwise in the policy.
                        let body = p.body.fill(who);
                        !p.any_before
                            && !p.any_after
                            && body.as_deref().and_then(canonical_scalar).as_deref() == Some(&t)
                    }
                })
            });
        // A duration spelled otherwise in the policy (only exact values: a
        // glob denies text, not a number of seconds).
        spelled
            || (!seconds.is_empty()
                && patterns.iter().any(|p| {
                    !p.any_before
                        && !p.any_after
                        && p.body
                            .fill(who)
                            .as_deref()
                            .and_then(duration::parse)
                            .is_some_and(|d| seconds.contains(&d))
                }))
    }
}

/// A boolean or an integer in the one spelling it is compared in (`false`,
/// `0`), from any spelling an endpoint reads as it; None for other text.
fn canonical_scalar(text: &str) -> Option<String> {
    let t = text.trim();
    if let Some(b) = gatepass_api::lenient::parse_bool(t) {
        return Some(b.to_string());
    }
    let digits = t.strip_prefix('+').unwrap_or(t);
    let negative = digits.starts_with('-');
    let body = digits.trim_start_matches('-');
    if body.is_empty()
        || !body.bytes().all(|b| b.is_ascii_digit())
        || digits.matches('-').count() > 1
    {
        return None;
    }
    // Any length: the value compares as the number it reads as, not
    // whether it fits in 64 bits.
    let body = body.trim_start_matches('0');
    Some(match (negative, body.is_empty()) {
        (_, true) => "0".to_string(),
        (true, false) => format!("-{body}"),
        (false, false) => body.to_string(),
    })
}

/// The text forms in which gatepass's endpoints may read one request value,
/// the one canonical view both constraint lists are checked against: a
/// string as it is, and, since list fields accept comma-separated text,
/// each of its trimmed comma-separated items (`" root"` is also `root`,
/// `"alice,root"` is also `alice` and `root`); a number or boolean as its
/// text (an endpoint reads `10` and `"10"` alike); a list as the forms of
/// each of its items. A map, a nested list or an empty list has no text
/// form: it is `opaque`, and only `[]` (any value) allows it.
struct Readings {
    texts: Vec<String>,
    opaque: bool,
}

impl Readings {
    fn of(value: &Value) -> Readings {
        let mut r = Readings {
            texts: Vec::new(),
            opaque: false,
        };
        match value {
            Value::Array(items) if items.is_empty() => r.opaque = true,
            Value::Array(items) => items.iter().for_each(|item| r.scalar(item)),
            other => r.scalar(other),
        }
        r
    }

    fn scalar(&mut self, value: &Value) {
        match value {
            Value::String(s) => {
                self.texts.push(s.clone());
                self.texts.extend(gatepass_api::lenient::split_list(s));
            }
            Value::Number(n) => self.texts.push(n.to_string()),
            Value::Bool(b) => self.texts.push(b.to_string()),
            Value::Null | Value::Array(_) | Value::Object(_) => self.opaque = true,
        }
    }
}

/// One value of a constraint list: Vault's glob (a leading and/or trailing
/// `*`) around a body that may hold identity templates.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ValuePattern {
    /// Started with `*`: the body may be preceded by anything.
    any_before: bool,
    /// Ended with `*`: the body may be followed by anything.
    any_after: bool,
    body: Template,
}

impl ValuePattern {
    fn exact(text: String) -> ValuePattern {
        ValuePattern {
            any_before: false,
            any_after: false,
            body: Template::text(text),
        }
    }

    fn parse(text: &str) -> std::result::Result<ValuePattern, String> {
        // Vault: a value shorter than two characters is never a glob.
        if text.chars().count() < 2 {
            return Ok(ValuePattern::exact(text.to_owned()));
        }
        let any_before = text.starts_with('*');
        let any_after = text.ends_with('*');
        let body = &text[usize::from(any_before)..text.len() - usize::from(any_after)];
        Ok(ValuePattern {
            any_before,
            any_after,
            body: Template::parse(body)?,
        })
    }

    /// The filled-in body is matched as plain text, so a name with `*` in
    /// it cannot widen the pattern. `unfilled` is the answer when a
    /// template cannot be filled in for this caller.
    /// [`ValuePattern::matches`] for a denied list, the text given in lower
    /// case and the pattern's body taken in lower case.
    fn matches_folded(&self, lower: &str, who: &Identity) -> bool {
        let Some(body) = self.body.fill(who) else {
            return true;
        };
        let body = body.to_lowercase();
        match (self.any_before, self.any_after) {
            (true, true) => lower.contains(&body),
            (true, false) => lower.ends_with(&body),
            (false, true) => lower.starts_with(&body),
            (false, false) => lower == body,
        }
    }

    fn matches(&self, text: &str, who: &Identity, unfilled: bool) -> bool {
        let Some(body) = self.body.fill(who) else {
            return unfilled;
        };
        match (self.any_before, self.any_after) {
            (true, true) => text.contains(body.as_ref()),
            (true, false) => text.ends_with(body.as_ref()),
            (false, true) => text.starts_with(body.as_ref()),
            (false, false) => text == body,
        }
    }
}

pub use crate::identity::template::Identity;
use crate::identity::template::Template;

/// The keys of one `path` block, collected from either syntax.
#[derive(Default)]
struct RuleSpec {
    capabilities: Option<Vec<String>>,
    /// Vault's legacy `policy = "read"` shorthand, which Vault still accepts.
    policy: Option<String>,
    params: Params,
    wrapping: WrappingTtls,
}

impl RuleSpec {
    /// Handles one key of a path block; `value` is `None` when the key's value
    /// is not a literal (string, number, bool, list or map of those).
    fn set(&mut self, pattern: &str, key: &str, value: Option<Value>) -> Result<()> {
        let at = |msg: String| invalid(format!("path {pattern:?}: {msg}"));
        let bad = |what| at(format!("{key} must be {what}"));
        match (key, value) {
            ("capabilities", Some(v)) => {
                self.capabilities = Some(string_list(v).ok_or_else(|| bad("a list of strings"))?)
            }
            ("policy", Some(Value::String(s))) => self.policy = Some(s),
            ("policy", _) => return Err(bad("a string")),
            ("allowed_parameters" | "denied_parameters", Some(Value::Object(map))) => {
                let parsed = value_map(map).map_err(|m| at(format!("{key}: {m}")))?;
                // Given twice in one block (two blocks, or a block and an
                // attribute), the maps are joined, as Vault reads them,
                // rather than the last one replacing the first.
                let mine = match key {
                    "allowed_parameters" => &mut self.params.allowed,
                    _ => &mut self.params.denied,
                };
                join_maps(mine, parsed);
            }
            ("allowed_parameters" | "denied_parameters", _) => {
                return Err(bad("a map of parameter names to lists of values"))
            }
            ("required_parameters", Some(v)) => {
                let names = string_list(v).ok_or_else(|| bad("a list of strings"))?;
                // Vault looks the lower-cased name up among the request's keys.
                self.params.required = names.iter().map(|n| n.to_lowercase()).collect();
            }
            ("capabilities" | "required_parameters", None) => return Err(bad("a list of strings")),
            ("min_wrapping_ttl" | "max_wrapping_ttl", v) => {
                let secs = v
                    .as_ref()
                    .and_then(|v| crate::duration::parse_value(key, v).ok())
                    .ok_or_else(|| bad("a duration (seconds or text such as \"5m\")"))?;
                match key {
                    "min_wrapping_ttl" => self.wrapping.min = secs,
                    _ => self.wrapping.max = secs,
                }
            }
            ("comment", _) => {}
            ("mfa_methods" | "control_group", _) => {
                return Err(at(format!("{key} is not supported")))
            }
            _ => return Err(at(format!("invalid key {key:?}"))),
        }
        Ok(())
    }

    fn build(self, pattern: &str) -> Result<(String, Perms)> {
        let at = |msg: String| invalid(format!("path {pattern:?}: {msg}"));
        if self.capabilities.is_none() && self.policy.is_none() {
            return Err(at("missing capabilities".into()));
        }
        let mut caps = CapSet::EMPTY;
        for name in self.capabilities.iter().flatten() {
            caps.insert(name.parse().map_err(|e: Error| at(e.to_string()))?);
        }
        use Capability::*;
        let write = [Create, Read, Update, Delete, List];
        caps = caps.merge(match self.policy.as_deref() {
            None => CapSet::EMPTY,
            Some("deny") => CapSet::DENY,
            Some("read") => [Read, List].into_iter().collect(),
            Some("write") => write.into_iter().collect(),
            Some("sudo") => write.into_iter().chain([Sudo]).collect(),
            Some(other) => return Err(at(format!("invalid policy {other:?}"))),
        });
        let w = self.wrapping;
        if w.min > 0 && w.max > 0 && w.max < w.min {
            return Err(at(
                "max_wrapping_ttl cannot be less than min_wrapping_ttl".into()
            ));
        }
        let (params, wrapping) = if caps.contains(Deny) {
            (Params::default(), WrappingTtls::default())
        } else {
            (self.params, w)
        };
        Ok((
            normalize_pattern(pattern)?,
            Perms {
                caps,
                params,
                wrapping,
            },
        ))
    }
}

/// A JSON list of strings.
fn string_list(v: Value) -> Option<Vec<String>> {
    match v {
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// An `allowed_parameters`/`denied_parameters` map: parameter name (matched
/// lower-cased, as Vault does) to the list of values. An empty map is the
/// same as none, as in Vault.
fn value_map(map: Map<String, Value>) -> std::result::Result<Option<ParamMap>, String> {
    let mut out = ParamMap::new();
    for (name, list) in map {
        let Value::Array(items) = list else {
            return Err(format!("{name:?} must be a list of values"));
        };
        let values = if items.is_empty() {
            Values::Any
        } else if name == "*" {
            // Vault's documented rule; a list here would read as a limit it
            // does not apply.
            return Err("\"*\" takes only the empty list []".into());
        } else {
            let patterns = items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => ValuePattern::parse(&s),
                    Value::Number(n) => Ok(ValuePattern::exact(n.to_string())),
                    Value::Bool(b) => Ok(ValuePattern::exact(b.to_string())),
                    _ => Err(format!(
                        "the values of {name:?} must be strings, numbers or booleans"
                    )),
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Values::OneOf(patterns)
        };
        let slot = out
            .entry(name.to_lowercase())
            .or_insert(Values::OneOf(Vec::new()));
        slot.merge(values);
    }
    Ok((!out.is_empty()).then_some(out))
}

fn normalize_pattern(pattern: &str) -> Result<String> {
    let p = pattern.strip_prefix('/').unwrap_or(pattern);
    let at = |msg| Err(invalid(format!("path {pattern:?}: {msg}")));
    if p.contains("{{") {
        return at("templated policies are not supported");
    }
    if p.contains("+*") {
        return at("invalid use of wildcards ('+*' is forbidden)");
    }
    if p.find('*').is_some_and(|i| i + 1 != p.len()) {
        return at("'*' is only allowed as the last character");
    }
    Ok(p.to_owned())
}

fn parse_json(text: &str) -> Result<Vec<(String, Perms)>> {
    // serde_json stops at 128 levels of nesting, so hostile input cannot
    // exhaust the stack here.
    serde_json::from_str::<KeysOnce>(text).map_err(invalid)?;
    let top: Value = serde_json::from_str(text).map_err(invalid)?;
    let Value::Object(top) = top else {
        return Err(invalid("does not contain a root object"));
    };
    let mut rules = Vec::new();
    for (key, value) in top {
        match key.as_str() {
            "name" => {}
            "path" => json_paths(value, &mut rules)?,
            other => return Err(invalid(format!("invalid key {other:?}"))),
        }
    }
    Ok(rules)
}

/// `"path"` holds an object of pattern → rule, or (as HCL's JSON allows) a
/// list of such objects.
fn json_paths(value: Value, rules: &mut Vec<(String, Perms)>) -> Result<()> {
    match value {
        Value::Object(paths) => {
            for (pattern, body) in paths {
                let Value::Object(body) = body else {
                    return Err(invalid(format!("path {pattern:?}: must be an object")));
                };
                let mut spec = RuleSpec::default();
                for (key, value) in body {
                    spec.set(&pattern, &key, Some(value))?;
                }
                rules.push(spec.build(&pattern)?);
            }
            Ok(())
        }
        Value::Array(items) => items.into_iter().try_for_each(|v| json_paths(v, rules)),
        _ => Err(invalid("path must be an object")),
    }
}

/// A JSON document none of whose objects has a key twice. serde_json
/// keeps the last of them; Vault keeps both (two `"path"` objects, or two
/// rules for one path, both apply). Refused, so that a rule is never
/// silently dropped.
struct KeysOnce;

impl<'de> serde::Deserialize<'de> for KeysOnce {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(KeysOnce)
    }
}

impl<'de> serde::de::Visitor<'de> for KeysOnce {
    type Value = KeysOnce;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> std::result::Result<KeysOnce, E> {
        Ok(KeysOnce)
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<KeysOnce, E> {
        Ok(KeysOnce)
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<KeysOnce, E> {
        Ok(KeysOnce)
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<KeysOnce, E> {
        Ok(KeysOnce)
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<KeysOnce, E> {
        Ok(KeysOnce)
    }
    fn visit_unit<E>(self) -> std::result::Result<KeysOnce, E> {
        Ok(KeysOnce)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<KeysOnce, A::Error> {
        while seq.next_element::<KeysOnce>()?.is_some() {}
        Ok(KeysOnce)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<KeysOnce, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "the key {key:?} is given twice in one object"
                )));
            }
            map.next_value::<KeysOnce>()?;
        }
        Ok(KeysOnce)
    }
}

fn parse_hcl(text: &str) -> Result<Vec<(String, Perms)>> {
    check_hcl_subset(text)?;
    // Vault reads policies as HCL 1, hcl-rs as HCL 2: where the text is not
    // HCL 2, it is read again in HCL 2's spelling of the same HCL 1.
    let respelled;
    let parsed = match hcl::parse(text) {
        Ok(body) => Ok((body, text)),
        Err(e) => match hcl1_as_hcl2(text) {
            // What hcl-rs is given is held to the subset too, whatever the
            // respelling made of it.
            Some(r) if check_hcl_subset(&r).is_ok() => {
                respelled = r;
                hcl::parse(&respelled)
                    .map(|body| (body, respelled.as_str()))
                    .map_err(|_| e)
            }
            _ => Err(e),
        },
    };
    let (body, parsed_text) = parsed.map_err(|e| match e {
        // One line instead of hcl's multi-line snippet, for a JSON error body.
        hcl::Error::Parse(e) => {
            let at = e.location();
            invalid(format!(
                "line {}, column {}: {}",
                at.line(),
                at.column(),
                e.message()
            ))
        }
        other => invalid(other),
    })?;
    // hcl-rs keeps the last of an object's keys given twice; Vault joins
    // their lists. Refused, so that neither reading is guessed at.
    if let Some(key) = object_key_given_twice(parsed_text) {
        return Err(invalid(format!("the key {key} is given twice in one map")));
    }
    let mut rules = Vec::new();
    for structure in body {
        match structure {
            Structure::Attribute(a) if a.key.as_str() == "name" => {}
            Structure::Block(b) if b.identifier.as_str() == "path" => {
                let [label] = b.labels.as_slice() else {
                    return Err(invalid("a path block takes exactly one path"));
                };
                let pattern = label.as_str();
                let mut spec = RuleSpec::default();
                for s in b.body {
                    let (key, value) = match s {
                        Structure::Attribute(a) => (a.key.into_inner(), hcl_value(a.expr)),
                        // HCL 1 also writes a map as a block:
                        // `allowed_parameters { "a" = [] }`.
                        Structure::Block(b) if b.labels.is_empty() => {
                            (b.identifier.into_inner(), hcl_block_value(b.body))
                        }
                        Structure::Block(b) => (b.identifier.into_inner(), None),
                    };
                    spec.set(pattern, &key, value)?;
                }
                rules.push(spec.build(pattern)?);
            }
            Structure::Attribute(a) => {
                return Err(invalid(format!("invalid key {:?}", a.key.as_str())))
            }
            Structure::Block(b) => {
                return Err(invalid(format!("invalid key {:?}", b.identifier.as_str())))
            }
        }
    }
    Ok(rules)
}

/// HCL 1's policy syntax that HCL 2 spells otherwise, respelled: a comma
/// between a block's attributes (`{ capabilities = ["read"], max_wrapping_ttl
/// = "1h" }`) is a newline, every block's braces are on lines of their own
/// (`path "a" { … } path "b" { … }`), and a map written as a
/// block inside a block (`allowed_parameters { "x" = [] }`, whose quoted
/// keys an HCL 2 block cannot have) is an attribute holding an object
/// (`allowed_parameters = { "x" = [] }`). Strings and comments are copied
/// as they are, so no value changes; None when the brackets do not match.
/// [`check_hcl_subset`] has already refused heredocs and interpolation.
/// Written by hand: no maintained crate reads HCL 1.
fn hcl1_as_hcl2(text: &str) -> Option<String> {
    #[derive(Clone, Copy, PartialEq)]
    enum In {
        Block,
        Object,
        List,
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut open: Vec<In> = Vec::new();
    // The last token was `=`; a bare word (a number, `true`) is a value
    // under way; a value just ended, so a key on the same line starts the
    // next attribute or item, which HCL 2 wants on a line of its own.
    let (mut after_equals, mut value_word, mut ended) = (false, false, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        // Where keys are: the top level, a block's body, an object.
        let keyed = !matches!(open.last(), Some(In::List));
        if value_word && !(c.is_alphanumeric() || c == '_' || c == '-' || c == '.') {
            value_word = false;
            ended = keyed;
        }
        match c {
            '"' => {
                if keyed && ended && !after_equals {
                    out.push('\n');
                }
                let value = keyed && after_equals;
                out.push(c);
                while let Some(c) = chars.next() {
                    out.push(c);
                    match c {
                        '\\' => out.extend(chars.next()),
                        '"' => break,
                        _ => {}
                    }
                }
                ended = value;
                after_equals = false;
            }
            '#' => {
                out.push(c);
                while let Some(c) = chars.next_if(|&c| c != '\n') {
                    out.push(c);
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                out.push(c);
                while let Some(c) = chars.next_if(|&c| c != '\n') {
                    out.push(c);
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                out.push(c);
                block_comment(&mut chars, Some(&mut out));
            }
            '{' => {
                let kind = if after_equals {
                    In::Object
                } else if open.last() == Some(&In::Block) && last_is_word(&out) {
                    // `allowed_parameters {` inside a block.
                    out.push_str(" =");
                    In::Object
                } else {
                    In::Block
                };
                out.push(c);
                if kind == In::Block {
                    // A block in HCL 2 is one line, with one attribute,
                    // or its body is on lines of its own.
                    out.push('\n');
                }
                open.push(kind);
                (after_equals, ended) = (false, false);
            }
            '[' => {
                out.push(c);
                open.push(In::List);
                (after_equals, ended) = (false, false);
            }
            '}' | ']' => {
                let closed = open.pop()?;
                if (c == ']') != (closed == In::List) {
                    return None;
                }
                if closed == In::Block {
                    out.push('\n');
                }
                out.push(c);
                if closed == In::Block {
                    out.push('\n');
                }
                after_equals = false;
                ended = closed != In::Block && !matches!(open.last(), Some(In::List));
            }
            // Only after a value, as in Vault: `{,a = 1}` and `a = 1,,`
            // are refused.
            ',' if matches!(open.last(), None | Some(In::Block)) => {
                if !ended {
                    return None;
                }
                out.push('\n');
                (after_equals, ended) = (false, false);
            }
            '=' => {
                out.push(c);
                (after_equals, ended) = (true, false);
            }
            '\n' => {
                out.push(c);
                ended = false;
            }
            c if c.is_whitespace() => out.push(c),
            c => {
                let word = c.is_alphanumeric() || c == '_' || c == '-' || c == '.';
                if word && !value_word {
                    if keyed && ended {
                        out.push('\n');
                    }
                    value_word = keyed && after_equals;
                }
                out.push(c);
                (after_equals, ended) = (false, false);
            }
        }
    }
    open.is_empty().then_some(out)
}

/// The first key an object (`{ … }` after `=`) of HCL text has twice, as
/// written (a string with its quotes). Strings and comments are skipped as
/// [`check_hcl_subset`] skips them.
fn object_key_given_twice(text: &str) -> Option<String> {
    // Per open bracket: a block's body (None), a list (None), or an
    // object with the keys seen so far and whether a key comes next.
    type Open = Vec<Option<(std::collections::HashSet<String>, bool)>>;
    let mut open: Open = Vec::new();
    let mut after_equals = false;
    let mut chars = text.chars().peekable();
    let key_at = |open: &mut Open, key: String| -> Option<String> {
        match open.last_mut() {
            Some(Some((seen, expect @ true))) => {
                *expect = false;
                (!seen.insert(key.clone())).then_some(key)
            }
            _ => None,
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let mut s = String::from('"');
                while let Some(c) = chars.next() {
                    s.push(c);
                    match c {
                        '\\' => s.extend(chars.next()),
                        '"' => break,
                        _ => {}
                    }
                }
                if let Some(k) = key_at(&mut open, s) {
                    return Some(k);
                }
                after_equals = false;
            }
            '#' => {
                chars.find(|&c| c == '\n');
                if let Some(Some((_, expect))) = open.last_mut() {
                    *expect = true;
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                chars.find(|&c| c == '\n');
                if let Some(Some((_, expect))) = open.last_mut() {
                    *expect = true;
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                block_comment(&mut chars, None);
            }
            '{' => {
                open.push(after_equals.then(|| (Default::default(), true)));
                after_equals = false;
            }
            '[' => {
                open.push(None);
                after_equals = false;
            }
            '}' | ']' => {
                open.pop();
                after_equals = false;
            }
            ',' | '\n' => {
                if let Some(Some((_, expect))) = open.last_mut() {
                    *expect = true;
                }
                // `x =` and its `{` may be on two lines.
                after_equals &= c == '\n';
            }
            '=' | ':' => after_equals = true,
            c if c.is_whitespace() => {}
            c => {
                let mut word = String::from(c);
                while let Some(c) = chars.next_if(|c| c.is_alphanumeric() || "_-.".contains(*c)) {
                    word.push(c);
                }
                if let Some(k) = key_at(&mut open, word) {
                    return Some(k);
                }
                after_equals = false;
            }
        }
    }
    None
}

/// Skips a `/* … */` comment whose `/` was just read, copying it to `out`
/// if given. The `*` of `/*` is the comment's, so `/*/` opens one and
/// does not close it, as in Vault's HCL 1 and hcl-rs.
fn block_comment(chars: &mut std::iter::Peekable<std::str::Chars>, mut out: Option<&mut String>) {
    let mut keep = |c: char| {
        if let Some(out) = out.as_deref_mut() {
            out.push(c);
        }
    };
    chars.next().into_iter().for_each(&mut keep);
    let mut prev = ' ';
    for c in chars.by_ref() {
        keep(c);
        if prev == '*' && c == '/' {
            break;
        }
        prev = c;
    }
}

/// Whether the text so far ends in a bare word (spaces aside): a block's
/// name before its `{`.
fn last_is_word(out: &str) -> bool {
    out.trim_end()
        .chars()
        .next_back()
        .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-')
}

/// A literal HCL expression as JSON; `None` for anything computed
/// (variables, templates, operators), which Vault's HCL 1 does not have.
fn hcl_value(expr: Expression) -> Option<Value> {
    Some(match expr {
        Expression::Null => Value::Null,
        Expression::Bool(b) => Value::Bool(b),
        Expression::Number(n) => serde_json::to_value(n).ok()?,
        Expression::String(s) => Value::String(s),
        Expression::Array(items) => {
            Value::Array(items.into_iter().map(hcl_value).collect::<Option<_>>()?)
        }
        Expression::Object(obj) => {
            let mut map = Map::new();
            for (k, v) in obj {
                let key = match k {
                    hcl::ObjectKey::Identifier(id) => id.into_inner(),
                    hcl::ObjectKey::Expression(Expression::String(s)) => s,
                    _ => return None,
                };
                map.insert(key, hcl_value(v)?);
            }
            Value::Object(map)
        }
        _ => return None,
    })
}

/// A label-less block's attributes as a JSON map.
fn hcl_block_value(body: hcl::Body) -> Option<Value> {
    let mut map = Map::new();
    for s in body {
        match s {
            Structure::Attribute(a) => {
                map.insert(a.key.into_inner(), hcl_value(a.expr)?);
            }
            Structure::Block(_) => return None,
        }
    }
    Some(Value::Object(map))
}

/// Deepest `{`/`[` nesting accepted; real policies need about four.
const MAX_HCL_DEPTH: usize = 32;
/// Most `-` signs accepted outside strings (negative numbers only).
const MAX_HCL_DASHES: usize = 32;

/// hcl-rs parses expressions recursively and overflows the stack (aborting
/// the whole server) on deep nesting or long operator chains, all of which a
/// client can send. Vault's HCL 1 has no operators, interpolation or
/// function calls, so anything beyond literals, lists and objects is
/// rejected before parsing.
fn check_hcl_subset(text: &str) -> Result<()> {
    let (mut depth, mut dashes) = (0usize, 0usize);
    // The character before this one outside strings and comments.
    let mut before = ' ';
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let prev = std::mem::replace(&mut before, c);
        match c {
            '"' => {
                let mut prev = '"';
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => {
                            chars.next();
                            prev = '\\';
                            continue;
                        }
                        '{' if prev == '$' || prev == '%' => {
                            return Err(invalid("string interpolation is not supported"))
                        }
                        // Vault's HCL 1 ends a string at the line's end.
                        '\n' | '\r' => return Err(invalid("a string cannot span lines")),
                        _ => {}
                    }
                    prev = c;
                }
            }
            '#' => {
                chars.find(|&c| c == '\n');
            }
            '/' if chars.peek() == Some(&'/') => {
                chars.find(|&c| c == '\n');
            }
            '/' if chars.peek() == Some(&'*') => {
                block_comment(&mut chars, None);
            }
            '{' | '[' => {
                depth += 1;
                if depth > MAX_HCL_DEPTH {
                    return Err(invalid("nested too deeply"));
                }
            }
            '}' | ']' => depth = depth.saturating_sub(1),
            '-' => {
                dashes += 1;
                if dashes > MAX_HCL_DASHES {
                    return Err(invalid("too many '-' outside strings"));
                }
            }
            // `==`, the one operator the characters below could spell: a
            // chain of them is parsed recursively.
            '=' if chars.peek() == Some(&'=') => {
                return Err(invalid("operators (==) are not supported"));
            }
            // Vault's HCL 1 reads `010` as octal (8), HCL 2 as 10: refused
            // rather than read as a value Vault would not.
            '0' if !(prev.is_alphanumeric() || "_.".contains(prev))
                && chars.peek().is_some_and(char::is_ascii_digit) =>
            {
                return Err(invalid(
                    "a number with a leading zero (octal in Vault): write it without",
                ));
            }
            c if c.is_alphanumeric() || c.is_whitespace() || "_.=,:".contains(c) => {}
            other => return Err(invalid(format!("unexpected character {other:?}"))),
        }
    }
    Ok(())
}

/// A non-exact pattern: a trailing `*` glob and/or `+` segments.
#[derive(Debug, Clone)]
struct Glob {
    /// The pattern without its trailing `*`.
    body: String,
    /// Ended in `*`: the rest of the path is matched as a prefix.
    prefix: bool,
    /// Split on `/` when the pattern has `+` segments (Vault's test for it),
    /// empty for a plain prefix.
    segments: Vec<String>,
    /// Priority inputs, precomputed: where the first `+` or `*` is, and how
    /// many `+` segments there are.
    first_wildcard: usize,
    wildcards: usize,
    perms: Perms,
}

impl Glob {
    /// `None` for an exact pattern.
    fn new(pattern: &str, perms: Perms) -> Option<Glob> {
        let segmented = pattern == "+" || pattern.contains("/+") || pattern.starts_with("+/");
        let (body, prefix) = match pattern.strip_suffix('*') {
            Some(body) => (body, true),
            None if segmented => (pattern, false),
            None => return None,
        };
        let segments: Vec<String> = if segmented {
            body.split('/').map(str::to_owned).collect()
        } else {
            Vec::new()
        };
        Some(Glob {
            body: body.to_owned(),
            prefix,
            first_wildcard: match segmented {
                true => body.find('+').unwrap_or(body.len()),
                false => body.len(),
            },
            wildcards: segments.iter().filter(|s| *s == "+").count(),
            segments,
            perms,
        })
    }

    fn matches(&self, path: &str) -> bool {
        if self.segments.is_empty() {
            return path.starts_with(&self.body);
        }
        // Everything before the first `+` is literal: a cheap first test,
        // since most `+` rules do not match most paths.
        if !path.starts_with(self.literal()) {
            return false;
        }
        let n = self.segments.len();
        let mut parts = path.split('/');
        for (i, seg) in self.segments.iter().enumerate() {
            let Some(part) = parts.next() else {
                return false;
            };
            let ok = match seg.as_str() {
                // Unlike Vault, `+` does not match an empty segment (`a//b`).
                "+" => !part.is_empty(),
                _ if self.prefix && i + 1 == n => part.starts_with(seg.as_str()),
                _ => seg == part,
            };
            if !ok {
                return false;
            }
        }
        self.prefix || parts.next().is_none()
    }

    /// The literal text before the first wildcard.
    fn literal(&self) -> &str {
        self.body.get(..self.first_wildcard).unwrap_or_default()
    }

    /// The matcher as it was before the index, kept to check it.
    #[cfg(test)]
    fn matches_unindexed(&self, path: &str) -> bool {
        if self.segments.is_empty() {
            return path.starts_with(&self.body);
        }
        let n = self.segments.len();
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() < n || (!self.prefix && parts.len() != n) {
            return false;
        }
        self.segments
            .iter()
            .zip(parts)
            .enumerate()
            .all(|(i, (seg, part))| match seg.as_str() {
                "+" => !part.is_empty(),
                _ if self.prefix && i + 1 == n => part.starts_with(seg.as_str()),
                _ => seg == part,
            })
    }

    /// Vault's ordering, higher wins: a later first wildcard, not ending in
    /// `*`, fewer `+` segments, longer, then lexicographically greater.
    fn priority(&self) -> (usize, bool, Reverse<usize>, usize, &str) {
        (
            self.first_wildcard,
            !self.prefix,
            Reverse(self.wildcards),
            self.body.len(),
            &self.body,
        )
    }
}

/// The combined rules of a token's policies, indexed so that a lookup does
/// not scan every rule: a policy of thousands of paths costs a request a hash
/// lookup and a few binary searches, not a walk over all of them.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    exact: HashMap<String, Perms>,
    /// Plain prefix rules (`foo/*`), sorted by body for the longest-prefix
    /// search in [`Acl::longest_prefix`].
    prefixes: Vec<Glob>,
    /// Rules with `+` segments, grouped by their literal text before the
    /// first `+`, each group highest priority first.
    segmented: HashMap<String, Vec<Glob>>,
    /// The lengths of those literal texts, longest first: a longer one is a
    /// later first wildcard, which wins by Vault's priority, so the first
    /// group holding a match holds the best `+` rule.
    segmented_lengths: Vec<usize>,
}

impl Acl {
    /// Rules with the same pattern in several policies merge (deny wins);
    /// different patterns never add up, the most specific one alone applies.
    pub fn new<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> Acl {
        let mut merged: HashMap<&str, Perms> = HashMap::new();
        for (pattern, perms) in policies.into_iter().flat_map(|p| &p.rules) {
            match merged.get_mut(pattern.as_str()) {
                Some(entry) => entry.merge(perms),
                None => {
                    merged.insert(pattern, perms.clone());
                }
            }
        }
        let mut acl = Acl::default();
        for (pattern, perms) in merged {
            match Glob::new(pattern, perms.clone()) {
                Some(glob) if glob.segments.is_empty() => acl.prefixes.push(glob),
                Some(glob) => {
                    let literal = glob.literal().to_owned();
                    acl.segmented.entry(literal).or_default().push(glob);
                }
                None => {
                    acl.exact.insert(pattern.to_owned(), perms);
                }
            }
        }
        acl.prefixes.sort_by(|a, b| a.body.cmp(&b.body));
        for group in acl.segmented.values_mut() {
            group.sort_by(|a, b| b.priority().cmp(&a.priority()));
        }
        acl.segmented_lengths = acl.segmented.keys().map(String::len).collect();
        acl.segmented_lengths.sort_unstable_by(|a, b| b.cmp(a));
        acl.segmented_lengths.dedup();
        acl
    }

    /// How many distinct patterns the ACL holds.
    pub fn len(&self) -> usize {
        self.exact.len()
            + self.prefixes.len()
            + self.segmented.values().map(Vec::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The capabilities granted on `path` (no leading slash, e.g.
    /// "auth/token/lookup-self"); empty if denied or no rule matches.
    ///
    /// Like Vault's `sys/capabilities`, this resolves the path as a list
    /// request would (a trailing `/` may also match the rule without it); to
    /// authorise a request use [`Acl::allows`].
    pub fn capabilities(&self, path: &str) -> CapSet {
        self.lookup(path, true, |p| self.best_glob(p))
    }

    /// True when the capabilities on `path` include `cap` (and not deny).
    pub fn allows(&self, path: &str, cap: Capability) -> bool {
        self.lookup(path, cap == Capability::List, |p| self.best_glob(p))
            .contains(cap)
    }

    /// True when a rule for exactly `path` (not a glob) denies it: what
    /// overrides a grant of Vault's `default` policy for the same path,
    /// where a glob rule, less specific than the default policy's exact
    /// one, does not.
    pub fn denies_exactly(&self, path: &str) -> bool {
        self.exact
            .get(path.trim_start_matches('/'))
            .is_some_and(|r| r.caps.contains(Capability::Deny))
    }

    /// Whether a request with these input fields passes the parameter
    /// constraints of the rule that grants it on `path` (see [`Params`]).
    /// The caller checks the capability first; this is only for reads and
    /// writes, the operations Vault checks parameters on. A refusal is
    /// Vault's plain "permission denied".
    pub fn check_parameters(
        &self,
        path: &str,
        data: &Map<String, Value>,
        who: &Identity,
    ) -> Result<()> {
        match self.find(path, false, |p| self.best_glob(p)) {
            Some(rule) if !rule.caps.contains(Capability::Deny) && rule.params.check(data, who) => {
                Ok(())
            }
            _ => Err(Error::PermissionDenied),
        }
    }

    /// Whether a request on `path` wrapped for `wrap_ttl` seconds (None:
    /// not wrapped) passes the `min_wrapping_ttl`/`max_wrapping_ttl` of the
    /// rule that grants it; `list` as for [`Acl::allows`]. A refusal is
    /// Vault's plain "permission denied".
    pub fn check_wrapping(&self, path: &str, list: bool, wrap_ttl: Option<i64>) -> Result<()> {
        match self.find(path, list, |p| self.best_glob(p)) {
            Some(rule) if !rule.wrapping.allow(wrap_ttl) => Err(Error::PermissionDenied),
            _ => Ok(()),
        }
    }

    /// The capabilities of the rule [`Acl::find`] picks; empty if denied.
    fn lookup<'a>(
        &'a self,
        path: &str,
        list: bool,
        best_glob: impl Fn(&str) -> Option<&'a Perms>,
    ) -> CapSet {
        match self.find(path, list, best_glob) {
            Some(rule) if !rule.caps.contains(Capability::Deny) => rule.caps,
            _ => CapSet::EMPTY,
        }
    }

    /// Vault's `AllowOperation` rule lookup: the exact rule, for a list
    /// request also the exact rule of the path without its trailing `/`,
    /// then the best glob of the path as it is. The globs are never tried
    /// on the trimmed path: there `secret/*` would win over a deny on
    /// `secret/dir/*` and list what the deny hides.
    fn find<'a>(
        &'a self,
        path: &str,
        list: bool,
        best_glob: impl Fn(&str) -> Option<&'a Perms>,
    ) -> Option<&'a Perms> {
        let path = path.trim_start_matches('/');
        let trimmed = path.strip_suffix('/').filter(|_| list);
        self.exact
            .get(path)
            .or_else(|| trimmed.and_then(|t| self.exact.get(t)))
            .or_else(|| best_glob(path))
    }

    /// The glob Vault would pick for `path`: the best of the longest plain
    /// prefix and the best matching `+` rule, by Vault's priority.
    fn best_glob(&self, path: &str) -> Option<&Perms> {
        let prefix = self.longest_prefix(path);
        let segmented = self.best_segmented(path);
        let best = match (prefix, segmented) {
            (Some(a), Some(b)) if b.priority() > a.priority() => b,
            (Some(a), _) => a,
            (None, b) => b?,
        };
        Some(&best.perms)
    }

    /// Among plain prefix rules, the one with the longest body that `path`
    /// starts with (a longer body means a later first wildcard, so it wins
    /// by Vault's priority). Binary search on the sorted bodies: the greatest
    /// body not after `path` is either a prefix of it, and then the longest,
    /// or shares some leading bytes with it, and then every matching body is
    /// a prefix of those shared bytes; each step shortens the key.
    fn longest_prefix(&self, path: &str) -> Option<&Glob> {
        let mut key = path.as_bytes();
        loop {
            let i = self.prefixes.partition_point(|g| g.body.as_bytes() <= key);
            let g = self.prefixes.get(i.checked_sub(1)?)?;
            let body = g.body.as_bytes();
            if key.starts_with(body) {
                return Some(g);
            }
            let common = body.iter().zip(key).take_while(|(a, b)| a == b).count();
            key = &key[..common];
        }
    }

    /// The best `+` rule matching `path`: only the groups whose literal text
    /// `path` starts with are tried, longest first.
    fn best_segmented(&self, path: &str) -> Option<&Glob> {
        self.segmented_lengths.iter().find_map(|&n| {
            let group = self.segmented.get(path.get(..n)?)?;
            group.iter().find(|g| g.matches(path))
        })
    }

    /// The scan over every rule that the index replaces, kept to check it.
    #[cfg(test)]
    fn best_glob_scan(&self, path: &str) -> Option<&Perms> {
        self.prefixes
            .iter()
            .chain(self.segmented.values().flatten())
            .filter(|g| g.matches_unindexed(path))
            .max_by(|a, b| a.priority().cmp(&b.priority()))
            .map(|g| &g.perms)
    }
}

/// Checks a policy name (already lower-cased by the caller) as Vault allows
/// them; `root` is built in and can never be written.
pub fn validate_name(name: &str, for_write: bool) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("policy name missing"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || " _.-/".contains(c))
    {
        return Err(Error::invalid(
            "policy name may only contain a-z, 0-9, space, '_', '.', '-' and '/'",
        ));
    }
    if name.len() > 128 {
        return Err(Error::invalid("policy name is longer than 128 characters"));
    }
    if name.starts_with('/') || name.ends_with('/') {
        return Err(Error::invalid("policy name cannot begin or end with '/'"));
    }
    // A name is read back through `sys/policy/<name>`: each part must be a
    // path segment the server accepts.
    if name.split('/').any(crate::path::is_dot_or_empty) {
        return Err(Error::invalid(
            "policy name cannot contain '//' or a '.' or '..' part",
        ));
    }
    if for_write && name == "root" {
        return Err(Error::invalid("cannot update \"root\" policy"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Capability::*;
    use super::*;

    fn build(texts: &[&str]) -> Acl {
        let policies: Vec<Policy> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| Policy::parse(&format!("p{i}"), t).unwrap())
            .collect();
        Acl::new(&policies)
    }

    fn rule(pattern: &str, caps: &str) -> String {
        format!("path \"{pattern}\" {{ capabilities = [{caps}] }}\n")
    }

    fn read_on(pattern: &str) -> Acl {
        build(&[&rule(pattern, "\"read\"")])
    }

    fn caps(names: &[Capability]) -> CapSet {
        names.iter().copied().collect()
    }

    #[test]
    fn wrapping_ttls_make_wrapping_mandatory_within_their_bounds() {
        let acl = build(&[r#"path "auth/approle/role/+/secret-id" {
  capabilities = ["update"]
  min_wrapping_ttl = "1m"
  max_wrapping_ttl = 600
}
path "ssh/sign/*" { capabilities = ["update"] }
"#]);
        let path = "auth/approle/role/ci/secret-id";
        assert!(acl.check_wrapping(path, false, None).is_err());
        assert!(acl.check_wrapping(path, false, Some(30)).is_err());
        assert!(acl.check_wrapping(path, false, Some(60)).is_ok());
        assert!(acl.check_wrapping(path, false, Some(600)).is_ok());
        assert!(acl.check_wrapping(path, false, Some(601)).is_err());
        // A rule without them leaves wrapping to the client.
        assert!(acl.check_wrapping("ssh/sign/dev", false, None).is_ok());
        assert!(acl.check_wrapping("ssh/sign/dev", false, Some(5)).is_ok());

        // Across policies on one pattern: the lower minimum, the higher
        // maximum (Vault's merge).
        let limits = |min: &str, max: &str| {
            format!(
                "path \"a\" {{\n  capabilities = [\"read\"]\n  min_wrapping_ttl = {min}\n  max_wrapping_ttl = {max}\n}}\n"
            )
        };
        let acl = build(&[
            &limits("100", "200"),
            &limits("50", "300"),
            r#"path "a" { capabilities = ["read"] }"#,
        ]);
        assert!(acl.check_wrapping("a", false, Some(50)).is_ok());
        assert!(acl.check_wrapping("a", false, Some(300)).is_ok());
        assert!(acl.check_wrapping("a", false, Some(301)).is_err());
        assert!(acl.check_wrapping("a", false, None).is_err());

        for bad in [limits("\"10m\"", "\"5m\""), limits("\"soon\"", "0")] {
            assert!(Policy::parse("bad", &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_policy_parses() {
        let p = Policy::parse("default", DEFAULT_POLICY).unwrap();
        assert_eq!(p.rules().count(), 4);
        let acl = Acl::new([&p]);
        assert!(acl.allows("auth/token/lookup-self", Read));
        assert!(acl.allows("auth/token/renew-self", Update));
        assert!(acl.allows("auth/token/revoke-self", Update));
        assert!(acl.allows("sys/capabilities-self", Update));
        assert!(!acl.allows("auth/token/lookup-self", Update));
        assert!(acl.capabilities("secret/foo").is_empty());
    }

    #[test]
    fn parses_hcl() {
        let p = Policy::parse(
            "p",
            r#"
            name = "ignored"
            # comment
            path "/secret/foo/*" {
                capabilities = ["read", "list"]
                allowed_parameters = { "key" = ["a", "b"], "*" = [] }
                denied_parameters = { "x" = [] }
                required_parameters = ["key"]
                min_wrapping_ttl = "1s"
                max_wrapping_ttl = 90
                comment = "ok"
            }
            // another comment
            path "sys/*" { capabilities = ["deny", "read"] }
            /* block comment */
            path "old" { policy = "write" }
            "#,
        )
        .unwrap();
        let rules: Vec<_> = p.rules().collect();
        assert_eq!(
            rules,
            vec![
                ("secret/foo/*", caps(&[Read, List])),
                ("sys/*", CapSet::DENY),
                ("old", caps(&[Create, Read, Update, Delete, List])),
            ]
        );
    }

    /// What Vault's HCL 1 reads and HCL 2 spells otherwise: each pair is
    /// the same policy, the first as HCL 2 would have it.
    #[test]
    fn reads_the_hcl1_spellings_vault_takes() {
        let same = [
            (
                "path \"a\" { capabilities = [\"read\"] }\npath \"b\" { capabilities = [\"list\"] }",
                "path \"a\" { capabilities = [\"read\"] } path \"b\" { capabilities = [\"list\"] }",
            ),
            (
                "path \"a\" {\n capabilities = [\"read\"]\n max_wrapping_ttl = \"1h\"\n}",
                "path \"a\" { capabilities = [\"read\"], max_wrapping_ttl = \"1h\" }",
            ),
            (
                "path \"a\" {\n capabilities = [\"read\"]\n min_wrapping_ttl = \"1s\"\n}",
                "path \"a\" {\n capabilities = [\"read\"],\n min_wrapping_ttl = \"1s\"\n}",
            ),
            (
                "path \"a\" {\n capabilities = [\"update\"]\n allowed_parameters = { \"x\" = [\"1\", \"2\"], \"y,z\" = [] }\n}",
                "path \"a\" {\n capabilities = [\"update\"]\n allowed_parameters {\n \"x\" = [\"1\", \"2\"]\n \"y,z\" = []\n }\n}",
            ),
        ];
        let more = [
            // One line, no commas.
            (
                "path \"a\" {\n capabilities = [\"read\"]\n max_wrapping_ttl = \"1h\"\n min_wrapping_ttl = 60\n}",
                "path \"a\" { capabilities = [\"read\"] max_wrapping_ttl = \"1h\" min_wrapping_ttl = 60 }",
            ),
            (
                "path \"a\" {\n capabilities = [\"update\"]\n allowed_parameters = { \"x\" = [], \"y\" = [\"1\"] }\n}",
                "path \"a\" { capabilities = [\"update\"] allowed_parameters { \"x\" = [] \"y\" = [\"1\"] } }",
            ),
            // A map given twice in one block is joined as Vault reads it:
            // a parameter's lists are one list, `[]` adding nothing to it.
            (
                "path \"a\" {\n capabilities = [\"update\"]\n allowed_parameters = { \"ttl\" = [\"60\"], \"key\" = [] }\n}",
                "path \"a\" {\n capabilities = [\"update\"]\n allowed_parameters {\n ttl = [\"60\"]\n key = []\n }\n allowed_parameters {\n ttl = []\n }\n}",
            ),
            (
                "path \"a\" {\n capabilities = [\"update\"]\n denied_parameters = { \"key_type\" = [], \"ttl\" = [] }\n}",
                "path \"a\" {\n capabilities = [\"update\"]\n denied_parameters { key_type = [] }\n denied_parameters = { \"ttl\" = [] }\n}",
            ),
        ];
        for (hcl2, hcl1) in same.into_iter().chain(more) {
            let want = Policy::parse("p", hcl2).unwrap();
            let got = Policy::parse("p", hcl1).unwrap_or_else(|e| panic!("{hcl1}: {e:?}"));
            assert_eq!(got.rules, want.rules, "{hcl1}");
        }
        // A comma inside a string or a comment stays where it is, and what
        // is neither HCL 1 nor HCL 2 is still refused.
        let p = Policy::parse(
            "p",
            "path \"a,b\" { capabilities = [\"read\"], /* x, y */ comment = \"p, q\" }",
        )
        .unwrap();
        assert_eq!(p.rules().map(|r| r.0).collect::<Vec<_>>(), vec!["a,b"]);
        // `/*/` opens a comment (as in Vault and hcl-rs): what follows up to
        // `*/` grants nothing, however it would read outside a comment.
        let hidden = "path \"r\" { capabilities = [\"read\"] } path \"s\" { capabilities = [\"read\"] } /*/ \" */\n# read-only \", path \"ssh/*\" { capabilities = [\"sudo\", \"update\"] }\n";
        let p = Policy::parse("p", hidden).unwrap();
        assert_eq!(p.rules().map(|r| r.0).collect::<Vec<_>>(), vec!["r", "s"]);
        // Nor can it hide from the subset check what would overflow the
        // parser's stack.
        let deep = format!(
            "path \"r\" {{ capabilities = [\"read\"] }} path \"s\" {{ capabilities = [\"read\"] }} /*/ \" */\n# \", x = {}{}\n",
            "[".repeat(5000),
            "]".repeat(5000)
        );
        let _ = Policy::parse("p", &deep);
        let deep = format!(
            "path \"r\" {{ capabilities = [\"read\"] }} path \"s\" {{ capabilities = [\"read\"], x = {}{} }}",
            "[".repeat(5000),
            "]".repeat(5000)
        );
        assert!(Policy::parse("p", &deep).is_err());
        // A key given twice in one map: hcl-rs would keep the last list,
        // Vault joins them. Refused, in either spelling.
        for twice in [
            "path \"a\" {\n capabilities = [\"update\"]\n allowed_parameters = { \"ttl\" = [\"60\"], \"ttl\" = [] }\n}",
            "path \"a\" {\n capabilities = [\"update\"]\n denied_parameters {\n \"ttl\" = [\"60\"]\n \"ttl\" = [\"70\"]\n }\n}",
            "path \"a\" { capabilities = [\"update\"] allowed_parameters = {\n ttl = [\"60\"] # x\n ttl = [] } }",
        ] {
            let e = Policy::parse("p", twice).unwrap_err();
            assert!(e.public_message().contains("given twice"), "{twice}: {e:?}");
        }
        for twice in [
            r#"{"path": {"secret/a": {"capabilities": ["deny"]}, "secret/a": {"capabilities": ["read"]}}}"#,
            r#"{"path": {"secret/a": {"capabilities": ["deny"], "capabilities": ["read"]}}}"#,
            r#"{"path": {"a": {"capabilities": ["read"]}}, "path": {"b": {"capabilities": ["read"]}}}"#,
        ] {
            let e = Policy::parse("p", twice).unwrap_err();
            assert!(e.public_message().contains("given twice"), "{twice}: {e:?}");
        }
        // An attribute given twice in one path block (`["deny"]`, then
        // `["read"]`) is refused by the HCL parser: neither is guessed at.
        for twice in [
            "path \"a\" {\n capabilities = [\"deny\"]\n capabilities = [\"read\"]\n}",
            "path \"a\" {\n policy = \"deny\"\n policy = \"read\"\n}",
            "path \"a\" {\n capabilities = [\"update\"]\n max_wrapping_ttl = \"1m\"\n max_wrapping_ttl = \"1h\"\n}",
        ] {
            let e = Policy::parse("p", twice).unwrap_err();
            assert!(e.public_message().contains("redefined attribute"), "{twice}: {e:?}");
        }
        // The same name in two maps, or in nested values, is fine.
        let two_maps = "path \"a\" {\n capabilities = [\"update\"]\n allowed_parameters = { \"ttl\" = [] }\n denied_parameters = { \"ttl\" = [\"1\"] }\n}";
        assert!(Policy::parse("p", two_maps).is_ok());
        assert!(Policy::parse(
            "p",
            "path \"a\" {\n capabilities = [\"read\"]\n comment = \"x\ny\"\n}"
        )
        .is_err());
        // A chain of `==` would overflow hcl-rs's stack; a leading zero is
        // octal in Vault.
        let chain = format!("x = 1{}", " == 1".repeat(5000));
        assert!(Policy::parse("p", &chain).is_err());
        for bad in [
            "path \"a\" { capabilities = [\"read\"] max_wrapping_ttl = 010 }",
            "path \"a\" {\n capabilities = [\"read\"]\n min_wrapping_ttl = 07\n}",
            "path \"a\" { capabilities = [\"read\"] ",
            "path \"a\" { capabilities = [\"read\"}",
            "path \"a\" = { capabilities = [\"read\"] }",
            "path \"a\" { capabilities = [\"read\"]; }",
            "path \"a\" {,capabilities = [\"read\"] }",
            "path \"a\" { capabilities = [\"read\"],, }",
        ] {
            assert!(Policy::parse("p", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_json() {
        let p = Policy::parse(
            "p",
            r#" {"path": {"secret/foo/*": {"capabilities": ["read"],
                 "allowed_parameters": {"a": []}},
                 "/sys/mounts": {"capabilities": ["sudo", "patch"]}}}"#,
        )
        .unwrap();
        let mut rules: Vec<_> = p.rules().collect();
        rules.sort_by_key(|r| r.0);
        assert_eq!(
            rules,
            vec![
                ("secret/foo/*", caps(&[Read])),
                ("sys/mounts", caps(&[Sudo, Patch])),
            ]
        );
        let list = Policy::parse("p", r#"{"path": [{"a": {"policy": "read"}}]}"#).unwrap();
        assert_eq!(list.rules().next(), Some(("a", caps(&[Read, List]))));
    }

    #[test]
    fn rejects_bad_input() {
        for text in [
            "",
            "   ",
            "# only a comment",
            "{}",
            r#"{"path": {}}"#,
            "{not json",
            "path \"a\" {",
            "path \"a\" { capabilities = [\"reed\"] }",
            "path \"a\" { capabilities = [\"Read\"] }",
            "path \"a\" { capabilities = \"read\" }",
            "path \"a\" { capabilities = [1] }",
            "path \"a\" { }",
            "path \"a\" { allowed_parameters = {} }",
            "path \"a\" { policy = \"bogus\" }",
            "path \"a\" {\n capabilities = [\"read\"]\n bogus = 1\n}",
            "path \"a\" {\n capabilities = [\"read\"]\n mfa_methods = [\"x\"]\n}",
            "path { capabilities = [\"read\"] }",
            "path \"a\" \"b\" { capabilities = [\"read\"] }",
            "other \"a\" { capabilities = [\"read\"] }",
            "foo = 1",
            "path \"a/*/b\" { capabilities = [\"read\"] }",
            "path \"a/+*\" { capabilities = [\"read\"] }",
            "path \"a/{{identity.entity.id}}\" { capabilities = [\"read\"] }",
            "path \"a/${x}\" { capabilities = [\"read\"] }",
            "path \"a\" { capabilities = [\"read\"], x = 1 + 2 }",
            r#"{"path": {"a": {"capabilities": ["nope"]}}}"#,
            r#"{"path": {"a": {}}}"#,
            r#"{"path": {"a": ["read"]}}"#,
            r#"{"other": 1}"#,
            "[1]",
        ] {
            let err = Policy::parse("p", text).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidRequest(m) if m.starts_with("failed to parse policy")),
                "{text:?}: {err:?}"
            );
        }
    }

    #[test]
    fn hostile_nesting_is_rejected_without_overflow() {
        let n = 100_000;
        for text in [
            format!("path \"a\" {{ x = {}{} }}", "[".repeat(n), "]".repeat(n)),
            format!("path \"a\" {{ x = 1{} }}", " + 1".repeat(n)),
            format!("path \"a\" {{ x = {}1 }}", "- ".repeat(n)),
            format!("path \"a\" {{ x = {}true }}", "!".repeat(n)),
            format!("path \"a\" {{ x = {}1 }}", "true ? 1 : ".repeat(n)),
            "{".repeat(n),
            format!("{}1{}", "[".repeat(n), "]".repeat(n)),
        ] {
            assert!(Policy::parse("p", &text).is_err());
        }
    }

    #[test]
    fn exact_and_glob() {
        let acl = build(&[&(rule("secret/foo", "\"read\"") + &rule("secret/bar*", "\"list\""))]);
        assert!(acl.allows("secret/foo", Read));
        assert!(!acl.allows("secret/foo/x", Read));
        assert!(!acl.allows("secret/fo", Read));
        assert!(acl.allows("secret/bar", List));
        assert!(acl.allows("secret/barn/x", List));
        assert!(!acl.allows("secret/ba", List));
        assert!(!acl.allows("secret/bar", Read));
        assert!(acl.allows("/secret/foo", Read));
    }

    #[test]
    fn plus_matches_one_segment() {
        let acl = build(&[&rule("secret/+/foo", "\"read\"")]);
        assert!(acl.allows("secret/a/foo", Read));
        assert!(acl.allows("secret/abc/foo", Read));
        assert!(!acl.allows("secret/a/b/foo", Read));
        assert!(!acl.allows("secret//foo", Read));
        assert!(!acl.allows("secret/foo", Read));
        assert!(!acl.allows("secret/a/foo/x", Read));
        let acl = read_on("+/x");
        assert!(acl.allows("a/x", Read));
        assert!(!acl.allows("x", Read));
    }

    #[test]
    fn plus_with_trailing_glob() {
        let acl = read_on("secret/+/foo*");
        assert!(acl.allows("secret/a/foo", Read));
        assert!(acl.allows("secret/a/foobar", Read));
        assert!(acl.allows("secret/a/foo/b/c", Read));
        assert!(!acl.allows("secret/a/fo", Read));
        assert!(!acl.allows("secret/a", Read));
        let acl = read_on("secret/+/*");
        assert!(acl.allows("secret/a/b", Read));
        assert!(acl.allows("secret/a/", Read));
        assert!(!acl.allows("secret/a", Read));
        let acl = read_on("secret/+/+");
        assert!(acl.allows("secret/a/b", Read));
        assert!(!acl.allows("secret/a/b/c", Read));
    }

    #[test]
    fn priority_follows_vault() {
        // From Vault's docs: secret/+/bar beats secret/* on secret/foo/bar,
        // and secret/foo/* beats secret/+/bar (first wildcard is later).
        let acl = build(&[&(rule("secret/*", "\"read\"")
            + &rule("secret/+/bar", "\"list\"")
            + &rule("secret/foo/*", "\"update\""))]);
        assert_eq!(acl.capabilities("secret/foo/bar"), caps(&[Update]));
        assert_eq!(acl.capabilities("secret/zip/bar"), caps(&[List]));
        assert_eq!(acl.capabilities("secret/zip/baz"), caps(&[Read]));

        let cases = [
            // first wildcard later wins
            ("foo/a*", "foo/+", "foo/ab"),
            ("foo/bar/+/baz", "foo/+/bar/baz", "foo/bar/bar/baz"),
            // not ending in * wins
            ("foo/+/bar", "foo/+/ba*", "foo/x/bar"),
            ("foo/+", "foo/*", "foo/x"),
            // fewer + segments wins
            ("foo/bar/+/baz", "foo/bar/+/+", "foo/bar/x/baz"),
            // longer wins
            ("foo/+/bar/ba*", "foo/+/bar/b*", "foo/x/bar/baz"),
            // longest plain prefix wins
            ("secret/foo/*", "secret/*", "secret/foo/x"),
        ];
        for (winner, loser, path) in cases {
            for order in [[winner, loser], [loser, winner]] {
                let text = rule(order[0], "\"read\"") + &rule(order[1], "\"list\"");
                let expected = if order[0] == winner { Read } else { List };
                let got = build(&[&text]).capabilities(path);
                assert_eq!(got, caps(&[expected]), "{winner} vs {loser} on {path}");
            }
        }
    }

    #[test]
    fn same_pattern_merges_across_policies() {
        let acl = build(&[&rule("secret/*", "\"read\""), &rule("secret/*", "\"list\"")]);
        assert_eq!(acl.capabilities("secret/x"), caps(&[Read, List]));
        assert_eq!(acl.capabilities("secret/x").names(), vec!["read", "list"]);
        // `secret/x*` is a different pattern from `secret/x`: no merge.
        let acl = build(&[
            &rule("secret/x", "\"read\""),
            &rule("secret/x*", "\"list\""),
        ]);
        assert_eq!(acl.capabilities("secret/x"), caps(&[Read]));
        assert_eq!(acl.capabilities("secret/xy"), caps(&[List]));
    }

    #[test]
    fn deny_wins() {
        let acl = build(&[&rule("secret/*", "\"read\""), &rule("secret/*", "\"deny\"")]);
        assert!(acl.capabilities("secret/x").is_empty());
        assert!(!acl.allows("secret/x", Read));
        assert_eq!(acl.capabilities("secret/x").names(), vec!["deny"]);
        // Deny on the most specific rule blocks a broader allow.
        let acl = build(&[
            &rule("secret/*", "\"read\", \"sudo\""),
            &rule("secret/private/*", "\"deny\""),
        ]);
        assert!(acl.allows("secret/public", Read));
        assert!(!acl.allows("secret/private/x", Read));
        assert!(!acl.allows("secret/private/x", Deny));
        // Deny in the same block drops the other capabilities.
        let acl = build(&[&rule("a", "\"read\", \"deny\"")]);
        assert!(acl.capabilities("a").is_empty());
    }

    #[test]
    fn less_specific_rules_do_not_add() {
        let acl = build(&[
            &rule("secret/*", "\"read\", \"list\""),
            &rule("secret/app/+", "\"update\""),
            &rule("secret/app/config", "\"create\""),
        ]);
        assert_eq!(acl.capabilities("secret/app/x"), caps(&[Update]));
        assert_eq!(acl.capabilities("secret/app/config"), caps(&[Create]));
        assert!(!acl.allows("secret/app/config", Read));
        assert_eq!(acl.capabilities("secret/other"), caps(&[Read, List]));
        // An empty list is valid (as in Vault) and shadows broader rules.
        let acl = build(&[&(rule("secret/*", "\"read\"") + &rule("secret/x", ""))]);
        assert!(acl.capabilities("secret/x").is_empty());
    }

    #[test]
    fn list_falls_back_without_trailing_slash() {
        let acl = build(&[&rule("secret/dir", "\"list\"")]);
        assert!(acl.allows("secret/dir/", List));
        assert!(!acl.allows("secret/dir/", Read));
        assert_eq!(acl.capabilities("secret/dir/"), caps(&[List]));
    }

    #[test]
    fn a_deny_below_a_glob_hides_the_folder_from_list() {
        // A list request's path ends in `/`; the deny on what is under
        // `ssh/roles/` is the longest glob for it, as in Vault.
        let acl =
            build(&[&(rule("ssh/*", "\"read\", \"list\"") + &rule("ssh/roles/*", "\"deny\""))]);
        assert!(!acl.allows("ssh/roles/", List));
        assert!(!acl.allows("ssh/roles/admin", Read));
        assert!(acl.allows("ssh/", List));
        assert!(acl.allows("ssh/config/ca", Read));
    }

    /// Both lookups on one ACL: through the index and by scanning every rule.
    fn both(acl: &Acl, path: &str, list: bool) -> (CapSet, CapSet) {
        (
            acl.lookup(path, list, |p| acl.best_glob(p)),
            acl.lookup(path, list, |p| acl.best_glob_scan(p)),
        )
    }

    #[test]
    fn index_agrees_with_scan_on_tables() {
        let acl = build(&[
            &(rule("*", "\"read\"")
                + &rule("s*", "\"list\"")
                + &rule("secret/*", "\"update\"")
                + &rule("secret/a*", "\"create\"")
                + &rule("secret/ab/*", "\"delete\"")
                + &rule("secret/abc", "\"sudo\"")
                + &rule("secret/+/x", "\"patch\"")
                + &rule("secret/+/x*", "\"read\", \"list\"")
                + &rule("+/+/+", "\"deny\"")
                + &rule("secret/b/+", "\"update\", \"sudo\"")
                + &rule("secrez/*", "\"read\"")
                + &rule("caf\u{e9}/*", "\"read\"")),
            &rule("secret/*", "\"create\""),
        ]);
        for path in [
            "",
            "s",
            "se",
            "secret",
            "secret/",
            "secret/a",
            "secret/ab",
            "secret/ab/",
            "secret/ab/c",
            "secret/abc",
            "secret/abd",
            "secret/b/x",
            "secret/b/y",
            "secret/b/y/z",
            "secret/q/x",
            "secret/q/xy/z",
            "secret/q/y",
            "secrey",
            "secrez",
            "secrez/q",
            "secrf/q",
            "a/b/c",
            "café",
            "café/x",
            "cafe/x",
            "zzz",
            "\u{10ffff}",
        ] {
            for list in [false, true] {
                let (indexed, scanned) = both(&acl, path, list);
                assert_eq!(indexed, scanned, "{path:?} list={list}");
                let (indexed, scanned) = both(&acl, &format!("{path}/"), list);
                assert_eq!(indexed, scanned, "{path:?}/ list={list}");
            }
        }
    }

    /// xorshift64: reproducible random cases without another dependency.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }

        /// A path of 1-4 segments from a small alphabet (so that patterns
        /// and paths collide often); `+` segments only if `plus`.
        fn path(&mut self, plus: bool) -> String {
            const PARTS: [&str; 10] = ["a", "b", "ab", "ba", "aa", "+", "", "é", "+b", "a+"];
            let n = 1 + self.below(4);
            let mut segs = Vec::with_capacity(n);
            while segs.len() < n {
                let p = PARTS[self.below(PARTS.len())];
                if plus || p != "+" {
                    segs.push(p);
                }
            }
            segs.join("/")
        }
    }

    #[test]
    fn index_agrees_with_scan_on_random_policies() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let capsets = [
            "\"read\"",
            "\"list\"",
            "\"deny\"",
            "\"update\", \"sudo\"",
            "",
        ];
        for _ in 0..300 {
            let mut texts = Vec::new();
            for _ in 0..1 + rng.below(3) {
                let mut text = String::new();
                for _ in 0..1 + rng.below(12) {
                    let mut pattern = rng.path(true);
                    if rng.below(2) == 0 {
                        pattern.push('*');
                    }
                    if pattern.contains("+*") || pattern.is_empty() {
                        continue;
                    }
                    text += &rule(&pattern, capsets[rng.below(capsets.len())]);
                }
                if !text.is_empty() {
                    texts.push(text);
                }
            }
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let acl = build(&refs);
            for _ in 0..40 {
                let mut path = rng.path(false);
                if rng.below(4) == 0 {
                    path.push('/');
                }
                for list in [false, true] {
                    let (indexed, scanned) = both(&acl, &path, list);
                    assert_eq!(indexed, scanned, "{path:?} list={list} in {texts:?}");
                }
            }
        }
    }

    #[test]
    fn thousands_of_paths() {
        let mut text = String::new();
        for i in 0..5000 {
            text += &rule(&format!("ssh/sign/role{i}"), "\"update\"");
            text += &rule(&format!("ssh/creds/r{i}/*"), "\"update\"");
        }
        text += &rule("ssh/creds/r42/secret*", "\"deny\"");
        let acl = build(&[&text]);
        assert_eq!(acl.len(), 10_001);
        assert!(acl.allows("ssh/sign/role4999", Update));
        assert!(!acl.allows("ssh/sign/role5000", Update));
        assert!(acl.allows("ssh/creds/r42/x", Update));
        assert!(!acl.allows("ssh/creds/r42/secret/x", Update));
        assert!(!acl.allows("ssh/creds/r", Update));
        assert!(acl.allows("ssh/creds/r4/", Update));
    }

    #[test]
    fn capset_basics() {
        let set = caps(&[Read, Create]) | caps(&[Sudo]);
        assert!(set.contains(Sudo) && !set.contains(List));
        assert_eq!(set.to_string(), "sudo, read, create");
        assert!(CapSet::default().is_empty());
        assert_eq!(CapSet::default().to_string(), "deny");
        assert_eq!("patch".parse::<Capability>().unwrap(), Patch);
        assert!("root".parse::<Capability>().is_err());
    }

    // Parameter constraints.

    fn sign_rule(extra: &str) -> String {
        format!("path \"ssh/sign/*\" {{\n capabilities = [\"update\"]\n {extra}\n}}\n")
    }

    /// Whether a request to `path` with this body passes, as an anonymous
    /// caller (no login name).
    fn passes(acl: &Acl, path: &str, body: Value) -> bool {
        passes_as(acl, path, body, Identity::default())
    }

    fn passes_as(acl: &Acl, path: &str, body: Value, who: Identity) -> bool {
        let data = body.as_object().cloned().unwrap_or_default();
        match acl.check_parameters(path, &data, &who) {
            Ok(()) => true,
            Err(Error::PermissionDenied) => false,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }

    use serde_json::json;

    #[test]
    fn allowed_parameters_with_values() {
        let acl = build(&[&sign_rule(
            r#"allowed_parameters = { "valid_principals" = ["alice"], "public_key" = [] }"#,
        )]);
        let p = "ssh/sign/dev";
        assert!(passes(
            &acl,
            p,
            json!({"public_key": "k", "valid_principals": "alice"})
        ));
        assert!(!passes(
            &acl,
            p,
            json!({"public_key": "k", "valid_principals": "root"})
        ));
        // Absent or null: not constrained (Vault does not know defaults).
        assert!(passes(&acl, p, json!({"public_key": "k"})));
        assert!(passes(
            &acl,
            p,
            json!({"public_key": "k", "valid_principals": null})
        ));
        assert!(passes(&acl, p, json!({})));
        // A parameter not in the map is refused.
        assert!(!passes(&acl, p, json!({"public_key": "k", "ttl": "1h"})));
        // Names are matched lower-cased, as in Vault.
        assert!(!passes(&acl, p, json!({"VALID_PRINCIPALS": "root"})));
        // No rule for the path: refused.
        assert!(!passes(&acl, "ssh/issue/dev", json!({})));
    }

    #[test]
    fn star_key_allows_every_other_parameter() {
        let acl = build(&[&sign_rule(
            r#"allowed_parameters = { "valid_principals" = ["alice"], "*" = [] }"#,
        )]);
        let p = "ssh/sign/dev";
        assert!(passes(
            &acl,
            p,
            json!({"ttl": "1h", "public_key": "k", "valid_principals": "alice"})
        ));
        assert!(!passes(
            &acl,
            p,
            json!({"ttl": "1h", "valid_principals": "root"})
        ));
        let acl = build(&[&sign_rule(r#"allowed_parameters = { "*" = [] }"#)]);
        assert!(passes(
            &acl,
            p,
            json!({"anything": ["x"], "valid_principals": "root"})
        ));
        // "*" takes only [], as Vault documents.
        let err = Policy::parse("p", &sign_rule(r#"allowed_parameters = { "*" = ["x"] }"#));
        assert!(err.is_err());
    }

    #[test]
    fn glob_values() {
        let acl = build(&[&sign_rule(
            r#"allowed_parameters = { "a" = ["foo-*"], "b" = ["*-bar"], "c" = ["*mid*"], "d" = ["*"], "e" = ["**"] }"#,
        )]);
        let ok = |k: &str, v: &str| passes(&acl, "ssh/sign/x", json!({ k: v }));
        assert!(ok("a", "foo-") && ok("a", "foo-1") && !ok("a", "xfoo-1") && !ok("a", "fo"));
        assert!(ok("b", "x-bar") && !ok("b", "x-barx"));
        assert!(ok("c", "amidb") && ok("c", "mid") && !ok("c", "mi-d"));
        // A one-character value is never a glob in Vault: "*" is literal.
        assert!(ok("d", "*") && !ok("d", "alice"));
        assert!(ok("e", "") && ok("e", "anything"));
    }

    #[test]
    fn denied_parameters_win_over_allowed() {
        let acl = build(&[&sign_rule(
            r#"allowed_parameters = { "valid_principals" = [], "*" = [] }
               denied_parameters = { "valid_principals" = ["root", "admin-*"], "ttl" = [] }"#,
        )]);
        let p = "ssh/sign/x";
        assert!(passes(&acl, p, json!({"valid_principals": "alice"})));
        assert!(!passes(&acl, p, json!({"valid_principals": "root"})));
        assert!(!passes(&acl, p, json!({"valid_principals": "admin-1"})));
        assert!(!passes(&acl, p, json!({"ttl": "1m"})));
        assert!(passes(&acl, p, json!({"key_id": "x"})));
        // Denied alone leaves every other parameter allowed.
        let acl = build(&[&sign_rule(r#"denied_parameters = { "ttl" = [] }"#)]);
        assert!(passes(
            &acl,
            p,
            json!({"key_id": "x", "valid_principals": "root"})
        ));
        assert!(!passes(&acl, p, json!({"ttl": 60})));
        // "*" denies every parameter, but not a request without any.
        let acl = build(&[&sign_rule(r#"denied_parameters = { "*" = [] }"#)]);
        assert!(!passes(&acl, p, json!({"key_id": "x"})));
        assert!(passes(&acl, p, json!({})));
    }

    /// Allowed values hold for a field sent under its other name too: a
    /// rule allowing `token_policies = ["dev"]` does not let `policies`
    /// set `admin`.
    #[test]
    fn allowed_values_hold_for_a_fields_other_name() {
        let acl = build(&[r#"path "auth/approle/role/*" {
            capabilities = ["update"]
            allowed_parameters = { "token_policies" = ["dev"], "*" = [] }
        }"#]);
        let p = "auth/approle/role/job";
        assert!(passes(&acl, p, json!({"token_policies": "dev"})));
        assert!(passes(&acl, p, json!({"policies": "dev"})));
        assert!(passes(&acl, p, json!({"secret_id_ttl": "1h"})));
        assert!(!passes(&acl, p, json!({"token_policies": "admin"})));
        assert!(!passes(&acl, p, json!({"policies": "admin"})));
        assert!(!passes(&acl, p, json!({"policies": ["dev", "admin"]})));
    }

    /// A denied value is refused in every spelling an endpoint reads alike:
    /// any case, Vault's boolean spellings, and under the field's other
    /// name (`policies` for `token_policies`).
    #[test]
    fn denied_values_hold_against_other_spellings_of_them() {
        let rule = r#"path "auth/userpass/users/*" {
            capabilities = ["update"]
            denied_parameters = { "token_policies" = ["admin"], "bind_secret_id" = ["false"], "ttl" = ["FALSE"] }
        }"#;
        let acl = build(&[rule]);
        let p = "auth/userpass/users/bob";
        assert!(passes(&acl, p, json!({"token_policies": "dev"})));
        assert!(passes(&acl, p, json!({"bind_secret_id": "true"})));
        for refused in [
            json!({"token_policies": "Admin"}),
            json!({"token_policies": ["dev", "ADMIN"]}),
            json!({"policies": "admin"}),
            json!({"policies": "dev, Admin"}),
            json!({"bind_secret_id": "0"}),
            json!({"bind_secret_id": "f"}),
            json!({"bind_secret_id": "FALSE"}),
            json!({"bind_secret_id": false}),
            json!({"bind_secret_id": 0}),
            json!({"ttl": "false"}),
            json!({"token_ttl": "0"}),
        ] {
            assert!(!passes(&acl, p, refused.clone()), "{refused}");
        }
        // A denied duration, in every spelling the endpoints read as the
        // same seconds, and under the field's other name.
        let acl = build(&[r#"path "auth/token/roles/*" {
            capabilities = ["update"]
            denied_parameters = { "token_explicit_max_ttl" = ["1h"], "token_period" = ["86400"] }
        }"#]);
        let p = "auth/token/roles/ci";
        for allowed in [
            json!({"token_explicit_max_ttl": "2h"}),
            json!({"token_explicit_max_ttl": 3599}),
            json!({"token_explicit_max_ttl": "59m"}),
            json!({"token_period": "23h"}),
        ] {
            assert!(passes(&acl, p, allowed.clone()), "{allowed}");
        }
        for refused in [
            json!({"token_explicit_max_ttl": "1h"}),
            json!({"token_explicit_max_ttl": "3600"}),
            json!({"token_explicit_max_ttl": 3600}),
            json!({"token_explicit_max_ttl": "60m"}),
            json!({"token_explicit_max_ttl": "3600s"}),
            json!({"token_explicit_max_ttl": "1h0m0s"}),
            json!({"token_explicit_max_ttl": " 30m1800s "}),
            json!({"token_explicit_max_ttl": "3600.5s"}),
            json!({"explicit_max_ttl": "60m"}),
            json!({"token_period": "24h"}),
            json!({"token_period": "1d"}),
            json!({"period": "1440m"}),
        ] {
            assert!(!passes(&acl, p, refused.clone()), "{refused}");
        }
        let acl = build(&[r#"path "auth/approle/role/*" {
            capabilities = ["update"]
            denied_parameters = { "token_num_uses" = ["0"], "secret_id_ttl" = ["+0100"] }
        }"#]);
        let p = "auth/approle/role/ci";
        assert!(passes(&acl, p, json!({"token_num_uses": "10"})));
        assert!(passes(&acl, p, json!({"secret_id_ttl": "1000"})));
        for refused in [
            json!({"token_num_uses": "00"}),
            json!({"token_num_uses": "+0"}),
            json!({"token_num_uses": "-0"}),
            json!({"num_uses": 0}),
            json!({"secret_id_ttl": 100}),
            json!({"secret_id_ttl": "0100"}),
        ] {
            assert!(!passes(&acl, p, refused.clone()), "{refused}");
        }
    }

    #[test]
    fn required_parameters() {
        let acl = build(&[&sign_rule(
            r#"required_parameters = ["Valid_Principals", "public_key"]"#,
        )]);
        let p = "ssh/sign/x";
        assert!(passes(
            &acl,
            p,
            json!({"valid_principals": "a", "public_key": "k", "ttl": 5})
        ));
        assert!(!passes(&acl, p, json!({"public_key": "k"})));
        assert!(!passes(
            &acl,
            p,
            json!({"valid_principals": null, "public_key": "k"})
        ));
        assert!(!passes(&acl, p, json!({})));
    }

    #[test]
    fn empty_list_allows_any_value() {
        let acl = build(&[&sign_rule(r#"allowed_parameters = { "ttl" = [] }"#)]);
        for v in [
            json!("1h"),
            json!(5),
            json!(["a"]),
            json!([]),
            json!({"x": 1}),
            json!(true),
        ] {
            assert!(passes(&acl, "ssh/sign/x", json!({ "ttl": v })), "{v}");
        }
        assert!(!passes(
            &acl,
            "ssh/sign/x",
            json!({ "ttl": "1h", "other": 1 })
        ));
    }

    #[test]
    fn constraints_merge_across_policies() {
        let alice = sign_rule(r#"allowed_parameters = { "valid_principals" = ["alice"] }"#);
        let bob = sign_rule(r#"allowed_parameters = { "valid_principals" = ["bob"] }"#);
        let p = "ssh/sign/x";
        let acl = build(&[&alice, &bob]);
        assert!(passes(&acl, p, json!({"valid_principals": "alice"})));
        assert!(passes(&acl, p, json!({"valid_principals": "bob"})));
        assert!(!passes(&acl, p, json!({"valid_principals": "root"})));
        // [] in either policy means any value.
        let any = sign_rule(r#"allowed_parameters = { "valid_principals" = [] }"#);
        for order in [[&alice, &any], [&any, &alice]] {
            let acl = build(&[order[0], order[1]]);
            assert!(passes(&acl, p, json!({"valid_principals": "root"})));
        }
        // As in Vault, a grant without constraints on the same pattern does
        // not lift the other policy's.
        let plain = sign_rule("");
        for order in [[&alice, &plain], [&plain, &alice]] {
            let acl = build(&[order[0], order[1]]);
            assert!(!passes(&acl, p, json!({"valid_principals": "root"})));
        }
        // Required and denied add up too.
        let req = sign_rule(r#"required_parameters = ["public_key"]"#);
        let deny = sign_rule(r#"denied_parameters = { "ttl" = [] }"#);
        // (public_key is not in alice's allowed map.)
        let acl = build(&[&alice, &req, &deny]);
        assert!(!passes(
            &acl,
            p,
            json!({"valid_principals": "alice", "public_key": "k"})
        ));
        let acl = build(&[&any, &req, &deny]);
        assert!(!passes(&acl, p, json!({"valid_principals": "alice"})));
        assert!(!passes(&acl, p, json!({"public_key": "k", "ttl": 1})));
        // A deny on the same pattern drops everything.
        let acl = build(&[&any, &rule("ssh/sign/*", "\"deny\"")]);
        assert!(!passes(&acl, p, json!({})));
        // Different patterns never merge: the most specific rule alone applies.
        let acl = build(&[&alice, &rule("ssh/sign/open", "\"update\"")]);
        assert!(passes(
            &acl,
            "ssh/sign/open",
            json!({"valid_principals": "root"})
        ));
        assert!(!passes(
            &acl,
            "ssh/sign/other",
            json!({"valid_principals": "root"})
        ));
    }

    #[test]
    fn list_values_are_checked_item_by_item() {
        let acl = build(&[&sign_rule(
            r#"allowed_parameters = { "valid_principals" = ["alice", "bob"], "*" = [] }
               denied_parameters = { "extensions" = ["permit-pty"] }"#,
        )]);
        let ok = |v: Value| passes(&acl, "ssh/sign/x", json!({ "valid_principals": v }));
        assert!(ok(json!(["alice"])));
        assert!(ok(json!(["alice", "bob"])));
        assert!(!ok(json!(["alice", "root"])));
        // No text form: only [] could allow it.
        assert!(!ok(json!([])));
        assert!(!ok(json!([["alice"]])));
        assert!(!ok(json!({"alice": "x"})));
        let ext = |v: Value| passes(&acl, "ssh/sign/x", json!({ "extensions": v }));
        assert!(!ext(json!(["permit-X11-forwarding", "permit-pty"])));
        assert!(ext(json!(["permit-X11-forwarding"])));
    }

    #[test]
    fn comma_text_is_checked_as_its_items_too() {
        let acl = build(&[&sign_rule(
            r#"allowed_parameters = { "valid_principals" = ["alice", "bob", "dev-*"] }"#,
        )]);
        let ok = |v: &str| passes(&acl, "ssh/sign/x", json!({ "valid_principals": v }));
        assert!(ok("alice"));
        // The SSH engine reads this as alice and root: refused, although
        // the whole text matches the glob "dev-*" (Vault would allow it).
        assert!(!ok("dev-1,root"));
        assert!(!ok("alice,root"));
        // Each item allowed, but an endpoint reading the text whole gets a
        // value the list does not hold: refused, as in Vault.
        assert!(!ok("alice,bob"));
        assert!(ok("dev-a,dev-b"));
        let acl = build(&[&sign_rule(
            r#"denied_parameters = { "valid_principals" = ["root"] }"#,
        )]);
        let ok = |v: Value| passes(&acl, "ssh/sign/x", json!({ "valid_principals": v }));
        assert!(!ok(json!("alice,root")));
        assert!(!ok(json!(" root ")));
        assert!(!ok(json!(["alice", " root"])));
        assert!(ok(json!("alice,rooty")));
    }

    #[test]
    fn numbers_and_booleans_compare_as_text() {
        let acl = build(&[&sign_rule(
            r#"denied_parameters = { "no_store" = [false, "false"] }
               allowed_parameters = { "ttl" = [3600, "2h"], "no_store" = [] }"#,
        )]);
        let ok = |b: Value| passes(&acl, "ssh/sign/x", b);
        assert!(!ok(json!({"no_store": false})));
        assert!(!ok(json!({"no_store": "false"})));
        assert!(ok(json!({"no_store": true})));
        assert!(ok(json!({"ttl": 3600})) && ok(json!({"ttl": "3600"})) && ok(json!({"ttl": "2h"})));
        assert!(!ok(json!({"ttl": 60})));
        let json_policy = r#"{"path": {"ssh/sign/*": {"capabilities": ["update"],
            "allowed_parameters": {"ttl": [3600, true]}}}}"#;
        let acl = build(&[json_policy]);
        assert!(passes(&acl, "ssh/sign/x", json!({"ttl": "3600"})));
        assert!(!passes(&acl, "ssh/sign/x", json!({"ttl": "60"})));
        assert!(
            Policy::parse("p", &sign_rule(r#"allowed_parameters = { "a" = [null] }"#)).is_err()
        );
        assert!(Policy::parse("p", &sign_rule(r#"allowed_parameters = { "a" = "x" }"#)).is_err());
        assert!(Policy::parse("p", &sign_rule(r#"allowed_parameters = ["a"]"#)).is_err());
        assert!(Policy::parse("p", &sign_rule(r#"required_parameters = "a""#)).is_err());
    }

    #[test]
    fn templated_values() {
        let acl = build(&[&sign_rule(
            r#"allowed_parameters = {
                 "valid_principals" = ["{{identity.entity.name}}", "{{identity.entity.aliases.auth_userpass_1.name}}-*"]
                 "key_id" = ["{{token_display_name}}"]
               }"#,
        )]);
        let meta = BTreeMap::from([("username".to_string(), "alice".to_string())]);
        let alice = Identity::of_token("userpass-alice", &meta);
        let p = "ssh/sign/x";
        assert!(passes_as(
            &acl,
            p,
            json!({"valid_principals": "alice"}),
            alice
        ));
        assert!(passes_as(
            &acl,
            p,
            json!({"valid_principals": "alice-dev"}),
            alice
        ));
        assert!(!passes_as(
            &acl,
            p,
            json!({"valid_principals": "root"}),
            alice
        ));
        assert!(!passes_as(
            &acl,
            p,
            json!({"valid_principals": "alice,root"}),
            alice
        ));
        assert!(passes_as(
            &acl,
            p,
            json!({"key_id": "userpass-alice"}),
            alice
        ));
        assert!(!passes_as(&acl, p, json!({"key_id": "token"}), alice));
        // Nor the literal template text: a token without a login name gets nothing.
        let no_meta = BTreeMap::new();
        let nobody = Identity::of_token("token", &no_meta);
        assert!(!passes_as(
            &acl,
            p,
            json!({"valid_principals": "{{identity.entity.name}}"}),
            nobody
        ));
        assert!(!passes_as(
            &acl,
            p,
            json!({"valid_principals": "-dev"}),
            nobody
        ));
        // A filled-in name is plain text, never a glob.
        let star = BTreeMap::from([("role_name".to_string(), "a*".to_string())]);
        let star = Identity::of_token("approle", &star);
        assert!(passes_as(&acl, p, json!({"valid_principals": "a*"}), star));
        assert!(!passes_as(
            &acl,
            p,
            json!({"valid_principals": "abc"}),
            star
        ));
        // Denied: a template that cannot be filled in denies every value.
        let acl = build(&[&sign_rule(
            r#"denied_parameters = { "valid_principals" = ["{{identity.entity.name}}"] }"#,
        )]);
        assert!(!passes_as(
            &acl,
            p,
            json!({"valid_principals": "alice"}),
            alice
        ));
        assert!(passes_as(
            &acl,
            p,
            json!({"valid_principals": "bob"}),
            alice
        ));
        assert!(!passes_as(
            &acl,
            p,
            json!({"valid_principals": "bob"}),
            nobody
        ));
        // Templates gatepass does not know are refused when written.
        for bad in [
            "{{identity.entity.groups.names}}",
            "{{identity.entity.metadata.}}",
            "{{x",
            "{{identity.entity.aliases..name}}",
        ] {
            let text = sign_rule(&format!(r#"allowed_parameters = {{ "a" = ["{bad}"] }}"#));
            assert!(Policy::parse("p", &text).is_err(), "{bad}");
        }
    }

    #[test]
    fn constraint_syntax_in_hcl_blocks_and_json() {
        let block = sign_rule(
            r#"allowed_parameters {
                 valid_principals = ["alice"]
                 key_id = []
               }"#,
        );
        let json_text = r#"{"path": {"ssh/sign/*": {"capabilities": ["update"],
            "allowed_parameters": {"Valid_Principals": ["alice"], "key_id": []},
            "required_parameters": ["key_id"]}}}"#;
        for text in [block.as_str(), json_text] {
            let acl = build(&[text]);
            assert!(passes(
                &acl,
                "ssh/sign/x",
                json!({"valid_principals": "alice", "key_id": "k"})
            ));
            assert!(!passes(
                &acl,
                "ssh/sign/x",
                json!({"valid_principals": "root", "key_id": "k"})
            ));
        }
        assert!(!passes(
            &build(&[json_text]),
            "ssh/sign/x",
            json!({"valid_principals": "alice"})
        ));
    }

    #[test]
    fn names() {
        for ok in ["default", "my-app", "team/app_1.x", "a b"] {
            validate_name(ok, true).unwrap();
        }
        validate_name("root", false).unwrap();
        let long = "a".repeat(129);
        for bad in [
            "",
            "Admin",
            "/a",
            "a/",
            "a*",
            "é",
            "root",
            long.as_str(),
            ".",
            "..",
            "a/../b",
            "a//b",
            "./a",
        ] {
            assert!(validate_name(bad, true).is_err(), "{bad:?}");
        }
        validate_name(&"a".repeat(128), true).unwrap();
    }
}
