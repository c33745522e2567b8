//! A real browser for the web UI tests: headless Chromium driven through
//! chromedriver (Debian's `chromium` and `chromium-driver`, which
//! `tests/run` installs) with the WebDriver protocol (fantoccini).
//!
//! [`Browser::start`] runs chromedriver on a free loopback port and opens a
//! session; dropping the `Browser` ends the session and stops chromedriver.
//! [`Browser::screenshot`] saves PNGs into [`screenshot_dir`]
//! (`target/ui-screenshots/`), which every run refreshes.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

/// Where the suite saves a screenshot of each main page.
pub fn screenshot_dir() -> PathBuf {
    let dir = crate::bin_dir().join("..").join("ui-screenshots");
    std::fs::create_dir_all(&dir).expect("create the screenshot folder");
    dir
}

/// Fails the test, saying what to install, unless chromedriver and
/// Chromium are installed: a browser test never passes by skipping.
pub fn require() {
    assert!(
        available(),
        "chromium and chromium-driver are needed (tests/run installs them)"
    );
}

/// Whether chromedriver and Chromium are installed.
fn available() -> bool {
    which("chromedriver").is_some() && (which("chromium").is_some())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

pub struct Browser {
    pub client: Client,
    driver: Child,
    /// Chromium's profile, removed at the end.
    _profile: tempfile::TempDir,
}

impl Browser {
    /// A headless Chromium that trusts any certificate (the dev server's
    /// is self-signed), with a window wide enough for the tables.
    pub async fn start() -> Browser {
        let port = crate::free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver (install chromium-driver)");
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let caps = caps.as_object().unwrap().clone();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no WebDriver session from chromedriver: {e}"),
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// The text of the element with this CSS selector, waiting up to 10 s
    /// for it to appear (a click's navigation may still be loading).
    pub async fn text(&self, css: &str) -> String {
        let found = self
            .client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await;
        match found {
            Ok(e) => e.text().await.unwrap(),
            Err(e) => panic!("no {css} on the page ({e}):\n{}", self.source().await),
        }
    }

    pub async fn exists(&self, css: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(css))
            .await
            .unwrap()
            .is_empty()
    }

    pub async fn fill(&self, css: &str, value: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .send_keys(value)
            .await
            .unwrap();
    }

    /// Clicks what submits a form or follows a link, and waits (up to
    /// 10 s) until the browser has left the page it was on.
    pub async fn click(&self, css: &str) {
        let old = self.client.find(Locator::Css("html")).await.unwrap();
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while old.tag_name().await.is_ok() {
            assert!(Instant::now() < deadline, "clicking {css} loaded no page");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn source(&self) -> String {
        self.client.source().await.unwrap()
    }

    /// Saves a PNG of the page as shown now, as `NAME.png` in
    /// [`screenshot_dir`].
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap();
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Ends the session and stops chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        crate::stop_child(&mut self.driver);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A test that failed before `close` still stops chromedriver (and
        // with it the browser it started).
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
