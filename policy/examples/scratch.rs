#![allow(clippy::unwrap_used)]
use serde::Deserialize;
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Inner { weight: u32, name: Option<String> }
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Outer { rules: Vec<Inner>, #[serde(default)] x: Option<u32> }
fn main() {
    for y in ["a: [1, 2\nb: 3", "a: b: c", "  - a\n b: 1", "a: 1\na: 2", "key: 'unterminated", "&a [*a]", "a: *b", "? [1]\n: 2", "1: x\n2.5: y\ntrue: z\n~: w", "a: !!binary aGVsbG8=", "a: 1.5\nb: 0x10\nc: 1e3\nd: yes\ne: 010\nf: 18446744073709551616\ng: -5"] {
        match serde_saphyr::from_str::<Option<serde_json::Value>>(y) {
            Ok(v) => println!("OK {y:?} => {v:?}"),
            Err(e) => println!("ERR {y:?} => display={} | nosnip={} | loc={:?}", e, e.without_snippet(), e.location().map(|l| (l.line(), l.column()))),
        }
    }
    for j in [r#"{"rules":[{"weight":1},{"weight":"x"}]}"#, r#"{"rules":[{"weight":1, "foo": 2}]}"#, r#"{"rules":[{}]}"#, r#"{"rules":[{"weight":1}], "x": null}"#, r#"{"rules":[{"weight":-1}]}"#] {
        let v: serde_json::Value = serde_json::from_str(j).unwrap();
        let r: Result<Outer, _> = serde_path_to_error::deserialize(v);
        match r { Ok(o) => println!("ok {o:?}"), Err(e) => println!("path={} inner={}", e.path(), e.inner()) }
    }
    println!("{}", serde_saphyr::to_string(&serde_json::json!({"a": 1.0, "b": "2s", "c": [], "d": {}, "e": "yes", "f": "010", "g": "*", "h": "spiffe://x/y"})).unwrap());
}
