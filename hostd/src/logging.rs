//! hostd's log: tracing to stderr (the journal under systemd), at the
//! level `GATEPASS_LOG` sets (an `EnvFilter`, default `info`), with the
//! `log` records of its libraries passed through.

use tracing::level_filters::LevelFilter;
use tracing::Subscriber;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The environment variable that sets the level.
pub const ENV: &str = "GATEPASS_LOG";

/// Sources whose records never go past info, whatever [`ENV`] says: at
/// debug, ureq (the login socket's HTTP client, `pam_gatepass::client`)
/// logs each request's head with every header but Authorization and
/// Cookie, and the host token travels as `X-Vault-Token`. This is a
/// separate filter rather than a directive added to `GATEPASS_LOG`'s,
/// which a more specific directive there (`ureq::unit=debug`) would beat.
fn secrets_kept_out() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("ureq", LevelFilter::INFO)
}

/// hostd's subscriber: `filter`'s records (less [`secrets_kept_out`]'s)
/// written to `writer`, without times for the journal, which stamps lines
/// itself.
pub fn subscriber<W>(
    filter: EnvFilter,
    writer: W,
    journald: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    if journald {
        Box::new(
            b.without_time()
                .with_ansi(false)
                .finish()
                .with(secrets_kept_out()),
        )
    } else {
        // Colours for a terminal only: in a file their escape codes are
        // noise around every field.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        Box::new(b.with_ansi(ansi).finish().with(secrets_kept_out()))
    }
}

/// Sets the process's subscriber from the environment (and passes `log`
/// records to it).
pub fn init() {
    let filter = EnvFilter::try_from_env(ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    // Fails only when a subscriber is already set: that one stays.
    if let Err(e) = subscriber(filter, std::io::stderr, journald).try_init() {
        eprintln!("gatepass-hostd: logging: {e}");
    }
}
