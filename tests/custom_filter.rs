//! A filter written outside Gatehouse, as a program built on the library
//! writes one: it implements `filter::Filter`, is registered under a kind
//! name, and a route of a config file uses it like a built-in filter. The
//! server runs in this test's process (the program that registered it).
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, ok_response, raw_exchange, raw_http_backend};
use gatehouse::filter::{self, Answer, Filter, Request, RequestEnd, Response};
use http::{HeaderName, HeaderValue};

/// Refuses requests marked with the configured header, tags the rest and
/// says on the response which user was served.
struct Maintenance {
    header: HeaderName,
}

impl Filter for Maintenance {
    fn request(&self, req: &mut Request<'_>) -> Result<(), Answer> {
        if req
            .headers
            .get(&self.header)
            .is_some_and(|v| v == "maintenance")
        {
            return Err(Answer::reject(RequestEnd::AuthDenied).with(
                HeaderName::from_static("x-why"),
                HeaderValue::from_static("maintenance window"),
            ));
        }
        req.headers
            .insert("x-checked-by", HeaderValue::from_static("maintenance"));
        req.state.user = Some("visitor".into());
        Ok(())
    }

    fn response(&self, resp: &mut Response<'_>) {
        if let Some(user) = resp.state.user.as_deref() {
            if let Ok(v) = HeaderValue::from_str(user) {
                resp.headers.insert("x-served-user", v);
            }
        }
    }
}

#[test]
fn a_custom_filter_registered_by_the_program_plugs_into_a_route() {
    filter::register("maintenance", |settings| {
        let header = settings
            .get("header")
            .and_then(|h| h.as_str())
            .ok_or("settings.header (a header name) is required")?;
        let header = HeaderName::from_bytes(header.as_bytes()).map_err(|e| e.to_string())?;
        Ok(Arc::new(Maintenance { header }) as Arc<dyn Filter>)
    })
    .unwrap();
    // A built-in kind's name cannot be taken.
    assert!(filter::register("jwt", |_| Err("no".into())).is_err());

    let (backend, seen) = raw_http_backend(|_| ok_response("ok"));
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = format!(
        r#"admin.enabled = false
workers = 1
[[listeners]]
name = "web"
bind = "{web}"
protocol = "http"

[[routes]]
name = "app"
match.listener = "web"
action.forward = ["{backend}"]
filters = ["window"]

[[filters]]
name = "window"
kind = "maintenance"
settings = {{ header = "x-mode" }}
"#
    );
    // Its settings are checked by its factory, like a built-in kind's.
    let bad = text.replace(
        "settings = { header = \"x-mode\" }",
        "settings = { head = 1 }",
    );
    let err = gatehouse::config::from_text(std::path::Path::new("c.toml"), &bad).unwrap_err();
    assert!(
        err.to_string().contains(
            "c.toml:17: filters[0].settings: settings.header (a header name) is required"
        ),
        "{err}"
    );
    let config = gatehouse::config::from_text(std::path::Path::new("c.toml"), &text).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _ = rt.block_on(gatehouse::server::run(config, None, Default::default()));
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(web).is_err() {
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }

    let (head, body) = raw_exchange(
        web,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"ok");
    assert!(
        head.to_ascii_lowercase().contains("x-served-user: visitor"),
        "{head}"
    );
    let up = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(up.header("x-checked-by"), vec!["maintenance"]);

    let (head, _) = raw_exchange(
        web,
        b"GET / HTTP/1.1\r\nHost: a\r\nx-mode: maintenance\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("gatehouse-error: auth_denied"), "{head}");
    assert!(lower.contains("x-why: maintenance window"), "{head}");
    assert_eq!(seen.lock().unwrap().len(), 1);
}
