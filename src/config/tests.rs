//! Unit tests of config parsing and validation: defaults, environment
//! substitution, and the line and field named by each kind of error.

use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "LISTEN_ADDR" => Some("127.0.0.1:18042".into()),
        "WORKERS" => Some("3".into()),
        _ => None,
    }
}

fn errors(text: &str) -> Vec<String> {
    match parse("t.toml", text, &env) {
        Ok(_) => panic!("config unexpectedly valid:\n{text}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

const MINIMAL: &str = r#"
[[listeners]]
name = "l"
bind = "127.0.0.1:0"

[[routes]]
name = "r"
action.forward = ["127.0.0.1:9000"]
"#;

#[test]
fn minimal_config_gets_defaults() {
    let c = parse("t.toml", MINIMAL, &env).unwrap();
    assert_eq!(c.timeouts.connect, Duration::from_secs(5));
    assert_eq!(c.timeouts.proxy_header, Duration::from_secs(5));
    assert_eq!(c.timeouts.idle, Some(Duration::from_secs(600)));
    assert_eq!(c.timeouts.max_lifetime, None);
    assert_eq!(c.timeouts.shutdown_drain, Duration::from_secs(30));
    assert_eq!(c.admin, Some("127.0.0.1:9901".parse().unwrap()));
    assert_eq!(c.routes[0].policy.connect_timeout, Duration::from_secs(5));
    assert!(c.workers >= 1);
}

#[test]
fn env_substitution_in_strings_and_numbers() {
    let text = r#"
workers = "${WORKERS}"
admin.bind = "${ADMIN_ADDR:-127.0.0.1:0}"
[[listeners]]
name = "l"
bind = "${LISTEN_ADDR}"
[[routes]]
name = "r"
action.forward = ["${BACKEND_ADDR:-127.0.0.1:18000}"]
"#;
    let c = parse("t.toml", text, &env).unwrap();
    assert_eq!(c.workers, 3);
    assert_eq!(c.admin, Some("127.0.0.1:0".parse().unwrap()));
    assert_eq!(c.listeners[0].bind, "127.0.0.1:18042".parse().unwrap());
    let Some(f) = c.routes[0].action.forward() else {
        panic!("not a forward route")
    };
    let cluster = &c.clusters[f.cluster];
    assert!(cluster.inline);
    assert_eq!(cluster.name, c.routes[0].name);
    assert_eq!(cluster.endpoints[0].address, "127.0.0.1:18000");
    assert_eq!(cluster.endpoints[0].weight, 1);
}

#[test]
fn each_class_of_error_names_its_line() {
    let text = r#"[timeouts]
connect = "0s"
idle = "5"
[[listeners]]
name = "l"
bind = "${NOPE}"
[[listeners]]
name = "l"
bind = "127.0.0.1:1"
proxy_protocol.trusted = ["10.0.0.0/33"]
[[routes]]
name = "r"
match.listener = "ghost"
action.forward = ["nohost"]
[[routes]]
name = "r"
action.forward = ["127.0.0.1:1"]
"#;
    let errs = errors(text);
    let expect = [
        "t.toml:2: timeouts.connect: must be longer than zero",
        "t.toml:3: timeouts.idle:",
        "t.toml:6: listeners[0].bind: environment variable NOPE is not set",
        "t.toml:8: listeners[1].name: duplicate listener name",
        "t.toml:10: listeners[1].proxy_protocol.trusted:",
        "t.toml:13: routes[0].match.listener: no listener is named \"ghost\"",
        "t.toml:14: routes[0].action.forward:",
        "t.toml:16: routes[1].name: duplicate route name",
    ];
    for e in expect {
        assert!(
            errs.iter().any(|x| x.starts_with(e)),
            "missing {e:?} in {errs:#?}"
        );
    }
    assert_eq!(errs.len(), expect.len(), "{errs:#?}");
}

#[test]
fn unknown_fields_are_errors_with_a_line() {
    let errs = errors(&format!("{MINIMAL}\n[limits]\nmax_conections = 5\n"));
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("t.toml:11:"), "{errs:?}");
    assert!(errs[0].contains("max_conections"), "{errs:?}");
}

#[test]
fn routes_share_a_named_cluster_and_a_missing_one_is_named() {
    let env = |_: &str| None;
    let text = r#"
[[listeners]]
name = "l"
bind = "127.0.0.1:0"

[[clusters]]
name = "api"
resolve_every = "5s"
endpoints = [{ address = "10.0.0.1:80" }, { address = "api.internal:80", weight = 3 }]

[[routes]]
name = "a"
action.cluster = "api"

[[routes]]
name = "b"
action.cluster = "api"
"#;
    let c = parse("t.toml", text, &env).unwrap();
    let cluster_of = |i: usize| c.routes[i].action.forward().map(|f| f.cluster);
    assert_eq!(cluster_of(0), Some(0));
    assert_eq!(cluster_of(1), Some(0));
    assert_eq!(c.clusters.len(), 1);
    assert_eq!(c.clusters[0].endpoints[1].weight, 3);
    assert_eq!(
        c.clusters[0].resolve_every,
        std::time::Duration::from_secs(5)
    );

    let bad = text.replace(
        "action.cluster = \"api\"\n\n[[routes]]",
        "action.cluster = \"apj\"\n\n[[routes]]",
    ) + "\n[[clusters]]\nname = \"api\"\nendpoints = [{ address = \"nope\", weight = 0 }]\n";
    let Err(errors) = parse("t.toml", &bad, &env) else {
        panic!("accepted")
    };
    let text = errors.to_string();
    assert!(
        text.contains(
            "t.toml:13: routes[0].action.cluster: no cluster is named \"apj\" (clusters: api, api)"
        ),
        "{text}"
    );
    assert!(
        text.contains("clusters[1].name: duplicate cluster name \"api\""),
        "{text}"
    );
    assert!(
        text.contains("clusters[1].endpoints[0].address: \"nope\" is not a target"),
        "{text}"
    );
    assert!(
        text.contains("clusters[1].endpoints[0].weight: must be at least 1"),
        "{text}"
    );
}
