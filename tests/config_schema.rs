//! The config's JSON Schema (`gatehouse schema`, kept as
//! `docs/gatehouse.schema.json` for editors): the file is what the code
//! generates, every example config is valid against it, and the mistakes
//! an editor should flag are not.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::process::Command;

use common::BIN;

fn generated() -> String {
    let out = Command::new(BIN).arg("schema").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn validator() -> jsonschema::Validator {
    let schema: serde_json::Value = serde_json::from_str(&generated()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

fn as_json(toml_text: &str) -> serde_json::Value {
    let table: toml::Table = toml::from_str(toml_text).unwrap();
    serde_json::to_value(table).unwrap()
}

#[test]
fn the_checked_in_schema_is_the_generated_one() {
    let kept = std::fs::read_to_string("docs/gatehouse.schema.json").unwrap();
    assert!(
        kept == generated(),
        "docs/gatehouse.schema.json is out of date: cargo run -- schema > docs/gatehouse.schema.json"
    );
}

#[test]
fn every_example_is_valid_against_the_schema() {
    let v = validator();
    let mut files = Vec::new();
    for dir in ["examples", "examples/bench"] {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                files.push(p);
            }
        }
    }
    assert!(files.len() >= 6, "{files:?}");
    for f in files {
        let doc = as_json(&std::fs::read_to_string(&f).unwrap());
        let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", f.display());
    }
}

#[test]
fn mistakes_an_editor_should_flag_are_invalid() {
    let v = validator();
    let good = "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n[[routes]]\nname = \"r\"\naction.forward = [\"127.0.0.1:9\"]\n";
    assert!(v.is_valid(&as_json(good)));
    for bad in [
        // A misspelt key.
        "[timeouts]\nconect = \"5s\"\n",
        // A single target where a list is expected.
        "[[routes]]\nname = \"r\"\naction.forward = \"127.0.0.1:9\"\n",
        // A listener without its address.
        "[[listeners]]\nname = \"l\"\n",
        // A table where a boolean is expected.
        "[[listeners]]\nname = \"l\"\nbind = \"x\"\nhttp.h2c = { on = true }\n",
    ] {
        assert!(!v.is_valid(&as_json(bad)), "{bad}");
    }
}
