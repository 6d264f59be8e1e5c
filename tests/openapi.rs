//! The admin API's OpenAPI document (`GET /v1/openapi.json`): a valid
//! OpenAPI 3.1 document whose operations are exactly those `GET /v1/`
//! lists, each of whose parameterless reads answers as documented.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::collections::BTreeSet;

use common::*;

/// `(METHOD, path)` with every parameter written `{}`.
fn normalize(method: &str, path: &str) -> (String, String) {
    let path = path.split(['?', '[']).next().unwrap();
    let path = path.strip_prefix("/v1").unwrap_or(path);
    let segments: Vec<String> = path
        .split('/')
        .map(|s| {
            let param = s.starts_with('{')
                || (!s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_uppercase() || c == ':' || c == '_'));
            if param { "{}".to_owned() } else { s.to_owned() }
        })
        .collect();
    (method.to_ascii_uppercase(), segments.join("/"))
}

#[test]
fn the_openapi_document_describes_exactly_the_admin_api() {
    let gh = Gatehouse::start(&simple_config("", "", echo_backend(), ""));
    let doc: serde_json::Value = serde_json::from_str(&gh.get("/v1/openapi.json")).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    assert_eq!(doc["info"]["title"], "Gatehouse admin API");
    assert!(!doc["info"]["version"].as_str().unwrap().is_empty());

    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(op["responses"].is_object(), "{method} {path}: no responses");
            documented.insert(normalize(method, path));
        }
    }
    let index = gh.get("/v1/");
    let listed: BTreeSet<(String, String)> = index
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let method = words.next()?;
            let path = words.next()?;
            ["GET", "POST", "PUT", "PATCH", "DELETE"]
                .contains(&method)
                .then(|| normalize(method, path))
        })
        .collect();
    assert!(listed.len() >= 20, "{index}");
    let undocumented: Vec<_> = listed.difference(&documented).collect();
    let unlisted: Vec<_> = documented.difference(&listed).collect();
    assert!(
        undocumented.is_empty(),
        "listed, not documented: {undocumented:?}"
    );
    assert!(unlisted.is_empty(), "documented, not listed: {unlisted:?}");

    // The schemas the operations name are in the document.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "RegistrationBody",
        "ConnSnapshot",
        "AuditReport",
        "Changes",
        "ErrorAnswer",
    ] {
        assert!(schemas.contains_key(name), "no schema {name}");
    }
    assert_eq!(
        schemas["RegistrationBody"]["required"],
        serde_json::json!(["address"])
    );
    let text = doc.to_string();
    for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap();
        assert!(
            schemas.contains_key(name),
            "a reference to a missing schema {name}"
        );
    }

    // Every read without parameters answers 200 with the documented type.
    for (path, item) in doc["paths"].as_object().unwrap() {
        let Some(get) = item.get("get") else { continue };
        if path.contains('{') {
            continue;
        }
        let (status, content_type) = {
            let mut s = std::net::TcpStream::connect(gh.admin).unwrap();
            use std::io::Write as _;
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let (head, _) = read_response(&mut s);
            let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
            (
                status,
                head_field(&head, "content-type").unwrap_or("").to_owned(),
            )
        };
        assert_eq!(status, 200, "GET {path}");
        let documented_type = get["responses"]["200"]["content"]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap()
            .clone();
        assert!(
            content_type.starts_with(&documented_type),
            "GET {path}: {content_type} (documented: {documented_type})"
        );
    }
}
