//! The check itself, written against small traits so that it is the same
//! code for the PAM module, the pam_exec helper and the unit tests:
//!
//! - [`PamItems`]: the PAM user, the remote host, the token (PAM_AUTHTOK or
//!   the helper's stdin) and a way to prompt for it;
//! - [`OtpServer`]: the server's answer for an OTP (TLS against the pinned
//!   CA and the time bound live behind it, in [`crate::client`]);
//! - [`LocalAddrs`]: this host's own addresses.
//!
//! In order: the server's answer for the OTP (the server consumes it); the
//! OTP's username equals the PAM user; the OTP's IP is exactly one of this
//! host's addresses, or else inside `allowed_cidr_list` (vault-ssh-helper's
//! rule since CVE-2020-24359); the role is in `allowed_roles` (`*` = any).
//! Anything else — no user, no token, no answer in time — refuses.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use zeroize::Zeroizing;

use crate::client::{Answer, OtpInfo, Verified, Via, VERIFY_ECHO_REQUEST};
use crate::config::Config;

/// The prompt when PAM has no token yet (as pam_unix and pam_exec ask).
pub const PROMPT: &str = "Password: ";

/// What the check needs from PAM. All of it is untrusted input.
pub trait PamItems {
    /// The user logging in (PAM_USER).
    fn user(&mut self) -> Option<String>;
    /// The remote host (PAM_RHOST), for the log only.
    fn rhost(&mut self) -> Option<String>;
    /// The token an earlier module or the application already has.
    fn authtok(&mut self) -> Option<Zeroizing<String>>;
    /// Asks for the token through the PAM conversation (echo off); `None`
    /// where there is no conversation (pam_exec).
    fn prompt(&mut self, text: &str) -> Option<Zeroizing<String>>;
}

/// The server(s), asked within the configured bound.
pub trait OtpServer {
    fn verify(&self, otp: &str) -> Verified;

    /// [`OtpServer::verify`], running `meanwhile` once on the way: where
    /// the question can be sent before the answer is read (hostd's
    /// socket), between the two, so that the caller's own work overlaps
    /// the servers' (the answer is most of a login's time); otherwise
    /// before asking.
    fn verify_overlapped(&self, otp: &str, meanwhile: &mut dyn FnMut()) -> Verified {
        meanwhile();
        self.verify(otp)
    }
}

/// This host's own interface addresses.
pub trait LocalAddrs {
    fn local_addrs(&self) -> Result<Vec<IpAddr>, String>;
}

/// Which roles and addresses this host accepts.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub allowed_roles: Vec<String>,
    pub allowed_cidr_list: Vec<IpNet>,
}

impl From<&Config> for Policy {
    fn from(c: &Config) -> Policy {
        Policy {
            allowed_roles: c.allowed_roles.clone(),
            allowed_cidr_list: c.allowed_cidr_list.clone(),
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The OTP logs this user in.
    Granted,
    /// The OTP (or its absence) does not.
    Denied,
    /// The check could not be made (no server answered, bad configuration);
    /// refused as well.
    Unavailable,
}

/// One attempt, for the caller's return code and the log line.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub decision: Decision,
    pub reason: String,
    pub user: Option<String>,
    pub rhost: Option<String>,
    /// What the server said the OTP was for.
    pub otp: Option<OtpInfo>,
    /// The server that answered.
    pub server: Option<String>,
    /// Whether the answer came through hostd or straight from the server.
    pub via: Option<Via>,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn granted(&self) -> bool {
        self.decision == Decision::Granted
    }

    /// An attempt that failed before the check (bad configuration or
    /// arguments).
    pub fn unavailable(
        reason: impl Into<String>,
        user: Option<String>,
        rhost: Option<String>,
    ) -> Outcome {
        Outcome {
            decision: Decision::Unavailable,
            reason: reason.into(),
            user,
            rhost,
            otp: None,
            server: None,
            via: None,
            elapsed: Duration::ZERO,
        }
    }
}

/// Runs the whole check for one login attempt. Nothing in the outcome
/// contains the token: should a server's message quote it, it is blanked.
pub fn authenticate(
    pam: &mut dyn PamItems,
    policy: &Policy,
    server: &dyn OtpServer,
    local: &dyn LocalAddrs,
) -> Outcome {
    authenticate_overlapped(pam, policy, server, local, &mut || {})
}

/// [`authenticate`], running `meanwhile` (the log's socket opened, say)
/// while the servers are asked; this host's addresses are read then too.
pub fn authenticate_overlapped(
    pam: &mut dyn PamItems,
    policy: &Policy,
    server: &dyn OtpServer,
    local: &dyn LocalAddrs,
    meanwhile: &mut dyn FnMut(),
) -> Outcome {
    let mut token = None;
    let mut out = check(pam, policy, server, local, meanwhile, &mut token);
    if let Some(t) = token.filter(|t: &Zeroizing<String>| t.trim().len() >= 4) {
        let t = t.trim();
        let blank = |s: &mut String| {
            if s.contains(t) {
                *s = s.replace(t, "[OTP]");
            }
        };
        blank(&mut out.reason);
        if let Some(i) = out.otp.as_mut() {
            blank(&mut i.username);
            blank(&mut i.ip);
            blank(&mut i.role_name);
        }
        if let Some(s) = out.server.as_mut() {
            blank(s);
        }
    }
    out
}

fn check(
    pam: &mut dyn PamItems,
    policy: &Policy,
    server: &dyn OtpServer,
    local: &dyn LocalAddrs,
    meanwhile: &mut dyn FnMut(),
    seen: &mut Option<Zeroizing<String>>,
) -> Outcome {
    let user = pam.user().filter(|u| !u.is_empty());
    let rhost = pam.rhost().filter(|h| !h.is_empty());
    let mut out = Outcome {
        decision: Decision::Denied,
        reason: String::new(),
        user: user.clone(),
        rhost,
        otp: None,
        server: None,
        via: None,
        elapsed: Duration::ZERO,
    };
    let deny = |mut out: Outcome, d: Decision, reason: String| {
        out.decision = d;
        out.reason = reason;
        out
    };
    let Some(user) = user else {
        return deny(out, Decision::Denied, "no PAM user".into());
    };
    let token = match pam.authtok().filter(|t| !t.is_empty()) {
        Some(t) => Some(t),
        None => pam.prompt(PROMPT),
    };
    let Some(token) = token else {
        return deny(out, Decision::Denied, "no OTP given".into());
    };
    let otp = Zeroizing::new(token.trim().to_string());
    *seen = Some(token);
    // Only UUIDs are ever issued, so anything else (a user's real password
    // typed at the prompt, say) is refused here and never sent anywhere.
    if otp.as_str() == VERIFY_ECHO_REQUEST || uuid::Uuid::try_parse(&otp).is_err() {
        return deny(out, Decision::Denied, "not an OTP (OTPs are UUIDs)".into());
    }

    let started = Instant::now();
    let mut addrs = None;
    let verified = server.verify_overlapped(&otp, &mut || {
        addrs = Some(local.local_addrs());
        meanwhile();
    });
    out.elapsed = started.elapsed();
    if let Verified::Answer { via, .. } = &verified {
        out.via = Some(*via);
    }
    let (srv, info) = match verified {
        Verified::Answer {
            server,
            answer: Answer::Valid(info),
            ..
        } => (server, info),
        Verified::Answer {
            server,
            answer: Answer::Refused(why),
            ..
        } => {
            out.server = Some(server);
            return deny(
                out,
                Decision::Denied,
                format!("server refused the OTP: {why}"),
            );
        }
        Verified::Answer {
            server,
            answer: Answer::Echo(_),
            ..
        } => {
            out.server = Some(server);
            return deny(
                out,
                Decision::Denied,
                "server answered with an echo, not an OTP".into(),
            );
        }
        Verified::Unreachable(failures) => {
            let list: Vec<String> = failures.iter().map(ToString::to_string).collect();
            return deny(
                out,
                Decision::Unavailable,
                format!("no server answered: {}", list.join("; ")),
            );
        }
    };
    out.server = Some(srv);
    out.otp = Some(info.clone());
    let local = ReadEarlier { addrs, local };
    match check_answer(&info, &user, policy, &local) {
        Ok(()) => deny(out, Decision::Granted, "OTP accepted".into()),
        Err(why) => deny(out, Decision::Denied, why),
    }
}

/// This host's addresses as read while the servers were asked (or now,
/// when they were not).
struct ReadEarlier<'a> {
    addrs: Option<Result<Vec<IpAddr>, String>>,
    local: &'a dyn LocalAddrs,
}

impl LocalAddrs for ReadEarlier<'_> {
    fn local_addrs(&self) -> Result<Vec<IpAddr>, String> {
        match &self.addrs {
            Some(a) => a.clone(),
            None => self.local.local_addrs(),
        }
    }
}

/// The checks on a valid answer: user, address, role.
pub fn check_answer(
    info: &OtpInfo,
    pam_user: &str,
    policy: &Policy,
    local: &dyn LocalAddrs,
) -> Result<(), String> {
    if info.username != pam_user {
        return Err(format!(
            "username mismatch: the OTP is for {:?}",
            info.username
        ));
    }
    check_ip(&info.ip, policy, local)?;
    check_role(&info.role_name, &policy.allowed_roles)
}

/// The OTP's IP must be exactly one of this host's addresses, or else in
/// `allowed_cidr_list`.
pub fn check_ip(ip_text: &str, policy: &Policy, local: &dyn LocalAddrs) -> Result<(), String> {
    let ip: IpAddr = ip_text
        .trim()
        .parse()
        .map_err(|_| format!("the OTP's IP {ip_text:?} is not an address"))?;
    let ip = ip.to_canonical();
    let addrs = local.local_addrs()?;
    if addrs.iter().any(|a| a.to_canonical() == ip) {
        return Ok(());
    }
    if policy.allowed_cidr_list.iter().any(|n| n.contains(&ip)) {
        return Ok(());
    }
    if policy.allowed_cidr_list.is_empty() {
        Err(format!(
            "the OTP's IP {ip} is not an address of this host (allowed_cidr_list is empty)"
        ))
    } else {
        Err(format!(
            "the OTP's IP {ip} is neither an address of this host nor in allowed_cidr_list"
        ))
    }
}

/// vault-ssh-helper's rule: empty refuses all, `*` allows any, otherwise
/// the role must be listed.
pub fn check_role(role: &str, allowed: &[String]) -> Result<(), String> {
    if allowed.is_empty() {
        return Err("missing allowed_roles: no role may log in".into());
    }
    if allowed.iter().any(|r| r == "*") {
        return Ok(());
    }
    let role = role.trim();
    if role.is_empty() {
        return Err("the server's answer names no role".into());
    }
    if allowed.iter().any(|r| r == role) {
        Ok(())
    } else {
        Err(format!("role {role:?} is not in allowed_roles"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Failure;
    use std::cell::{Cell, RefCell};

    const OTP: &str = "6f1e3a52-9d0c-4b7e-8a61-2c5d9e0f1a2b";

    #[derive(Default)]
    struct FakePam {
        user: Option<String>,
        rhost: Option<String>,
        authtok: Option<String>,
        answer: Option<String>,
        prompts: Vec<String>,
    }

    impl PamItems for FakePam {
        fn user(&mut self) -> Option<String> {
            self.user.clone()
        }
        fn rhost(&mut self) -> Option<String> {
            self.rhost.clone()
        }
        fn authtok(&mut self) -> Option<Zeroizing<String>> {
            self.authtok.clone().map(Zeroizing::new)
        }
        fn prompt(&mut self, text: &str) -> Option<Zeroizing<String>> {
            self.prompts.push(text.to_string());
            self.answer.clone().map(Zeroizing::new)
        }
    }

    fn pam(token: &str) -> FakePam {
        FakePam {
            user: Some("root".into()),
            rhost: Some("192.0.2.7".into()),
            authtok: Some(token.into()),
            ..FakePam::default()
        }
    }

    struct FakeServer {
        answer: Verified,
        asked: RefCell<Vec<String>>,
    }

    impl FakeServer {
        fn valid(user: &str, ip: &str, role: &str) -> FakeServer {
            FakeServer::new(Verified::Answer {
                server: "https://gp:8200".into(),
                answer: Answer::Valid(OtpInfo {
                    username: user.into(),
                    ip: ip.into(),
                    role_name: role.into(),
                }),
                via: Via::Direct,
            })
        }
        fn new(answer: Verified) -> FakeServer {
            FakeServer {
                answer,
                asked: RefCell::new(Vec::new()),
            }
        }
    }

    impl OtpServer for FakeServer {
        fn verify(&self, otp: &str) -> Verified {
            self.asked.borrow_mut().push(otp.to_string());
            self.answer.clone()
        }
    }

    struct Addrs(Vec<&'static str>, Cell<usize>);

    impl LocalAddrs for Addrs {
        fn local_addrs(&self) -> Result<Vec<IpAddr>, String> {
            self.1.set(self.1.get() + 1);
            Ok(self.0.iter().map(|a| a.parse().unwrap()).collect())
        }
    }

    fn host() -> Addrs {
        Addrs(
            vec!["127.0.0.1", "::1", "10.1.2.3", "fe80::1"],
            Cell::new(0),
        )
    }

    fn any_role() -> Policy {
        Policy {
            allowed_roles: vec!["*".into()],
            allowed_cidr_list: vec![],
        }
    }

    #[test]
    fn a_valid_otp_for_this_user_and_host_is_granted() {
        let s = FakeServer::valid("root", "10.1.2.3", "otp");
        let o = authenticate(&mut pam(OTP), &any_role(), &s, &host());
        assert_eq!(o.decision, Decision::Granted, "{o:?}");
        assert_eq!(s.asked.borrow().as_slice(), [OTP]);
        assert_eq!(o.user.as_deref(), Some("root"));
        assert_eq!(o.rhost.as_deref(), Some("192.0.2.7"));
        assert_eq!(o.server.as_deref(), Some("https://gp:8200"));
        // IPv6 and an IPv4-mapped form of a local address.
        for ip in ["::1", "::ffff:10.1.2.3"] {
            let s = FakeServer::valid("root", ip, "otp");
            assert!(
                authenticate(&mut pam(OTP), &any_role(), &s, &host()).granted(),
                "{ip}"
            );
        }
    }

    #[test]
    fn the_token_is_trimmed_and_asked_for_when_pam_has_none() {
        let s = FakeServer::valid("root", "127.0.0.1", "otp");
        let mut p = pam(&format!(" {OTP}\n"));
        assert!(authenticate(&mut p, &any_role(), &s, &host()).granted());
        assert!(p.prompts.is_empty(), "PAM_AUTHTOK was there: no prompt");
        let mut p = FakePam {
            user: Some("root".into()),
            answer: Some(OTP.into()),
            ..FakePam::default()
        };
        assert!(authenticate(&mut p, &any_role(), &s, &host()).granted());
        assert_eq!(p.prompts, [PROMPT]);
    }

    #[test]
    fn refusals_in_order() {
        let host = host();
        let cases: Vec<(&str, FakePam, FakeServer, Policy, &str)> = vec![
            ("no user", FakePam { authtok: Some(OTP.into()), ..FakePam::default() },
                FakeServer::valid("root", "127.0.0.1", "otp"), any_role(), "no PAM user"),
            ("no token", FakePam { user: Some("root".into()), ..FakePam::default() },
                FakeServer::valid("root", "127.0.0.1", "otp"), any_role(), "no OTP given"),
            ("a password", pam("hunter2"), FakeServer::valid("root", "127.0.0.1", "otp"), any_role(), "not an OTP"),
            ("echo request", pam(VERIFY_ECHO_REQUEST), FakeServer::valid("root", "127.0.0.1", "otp"), any_role(), "not an OTP"),
            ("used or unknown", pam(OTP), FakeServer::new(Verified::Answer { server: "s".into(), answer: Answer::Refused("400 OTP not found".into()), via: Via::Direct }),
                any_role(), "server refused the OTP: 400 OTP not found"),
            ("no server", pam(OTP), FakeServer::new(Verified::Unreachable(vec![
                    Failure { server: "https://a".into(), error: "connection refused".into() },
                    Failure { server: "https://b".into(), error: "no answer within 2.5s".into() }])),
                any_role(), "no server answered: https://a: connection refused; https://b: no answer within 2.5s"),
            ("other user", pam(OTP), FakeServer::valid("alice", "127.0.0.1", "otp"), any_role(), "username mismatch"),
            ("other user, case", pam(OTP), FakeServer::valid("Root", "127.0.0.1", "otp"), any_role(), "username mismatch"),
            ("other host", pam(OTP), FakeServer::valid("root", "10.255.255.1", "otp"), any_role(), "not an address of this host"),
            ("other host in the same /8", pam(OTP), FakeServer::valid("root", "10.1.2.4", "otp"), any_role(), "not an address of this host"),
            ("garbage IP", pam(OTP), FakeServer::valid("root", "10.1.2.3/8", "otp"), any_role(), "is not an address"),
            ("no allowed roles", pam(OTP), FakeServer::valid("root", "127.0.0.1", "otp"), Policy::default(), "missing allowed_roles"),
            ("role not allowed", pam(OTP), FakeServer::valid("root", "127.0.0.1", "admin"),
                Policy { allowed_roles: vec!["otp".into(), "ops".into()], allowed_cidr_list: vec![] }, "role \"admin\" is not in allowed_roles"),
        ];
        for (what, mut p, s, policy, reason) in cases {
            let o = authenticate(&mut p, &policy, &s, &host);
            assert!(!o.granted(), "{what}: {o:?}");
            assert!(
                o.reason.contains(reason),
                "{what}: {:?} lacks {reason:?}",
                o.reason
            );
        }
    }

    #[test]
    fn local_refusals_never_reach_the_server() {
        let s = FakeServer::valid("root", "127.0.0.1", "otp");
        for token in ["hunter2", "", VERIFY_ECHO_REQUEST] {
            let o = authenticate(&mut pam(token), &any_role(), &s, &host());
            assert!(!o.granted());
        }
        assert!(s.asked.borrow().is_empty());
    }

    #[test]
    fn allowed_cidr_list_admits_other_addresses() {
        let policy = Policy {
            allowed_roles: vec!["*".into()],
            allowed_cidr_list: vec!["10.255.0.0/16".parse().unwrap()],
        };
        let s = FakeServer::valid("root", "10.255.255.1", "otp");
        assert!(authenticate(&mut pam(OTP), &policy, &s, &host()).granted());
        let s = FakeServer::valid("root", "10.254.0.1", "otp");
        let o = authenticate(&mut pam(OTP), &policy, &s, &host());
        assert!(
            o.reason
                .contains("neither an address of this host nor in allowed_cidr_list"),
            "{o:?}"
        );
    }

    #[test]
    fn a_server_quoting_the_otp_does_not_put_it_in_the_outcome() {
        let s = FakeServer::new(Verified::Answer {
            server: "https://gp".into(),
            answer: Answer::Refused(format!("400 OTP {OTP} not found")),
            via: Via::Direct,
        });
        let o = authenticate(&mut pam(OTP), &any_role(), &s, &host());
        assert_eq!(o.reason, "server refused the OTP: 400 OTP [OTP] not found");
        let s = FakeServer::valid(OTP, OTP, OTP);
        let o = authenticate(&mut pam(OTP), &any_role(), &s, &host());
        assert!(!format!("{o:?}").contains(OTP), "{o:?}");
    }

    #[test]
    fn unreachable_is_unavailable_and_a_no_is_denied() {
        let s = FakeServer::new(Verified::Unreachable(vec![]));
        assert_eq!(
            authenticate(&mut pam(OTP), &any_role(), &s, &host()).decision,
            Decision::Unavailable
        );
        let s = FakeServer::valid("alice", "127.0.0.1", "otp");
        assert_eq!(
            authenticate(&mut pam(OTP), &any_role(), &s, &host()).decision,
            Decision::Denied
        );
    }
}
