//! `TrafficRoute` evaluation: which subset of a service's endpoints a request goes to.
//!
//! Semantics (as `docs/policies.md` documents them):
//!
//! - Rules are tried in order; the **first rule with a matching entry in `matches`** decides.
//!   A rule without `matches` takes every request. A request no rule takes is balanced across
//!   **all** endpoints (no subset).
//! - A match holds when **all** its conditions hold: the path (`exact`, `prefix` — a plain
//!   string prefix, `/api` also matches `/apix` — or `regex`, which must match the **whole**
//!   path), the method (exact, case-sensitive) and every header condition. The path is the
//!   URI path without the query string.
//! - Header conditions: names are case-insensitive; `exact`, `prefix` and `regex` (whole value)
//!   hold when **any** value of the header satisfies them; `present: true` needs the header,
//!   `present: false` needs it absent.
//! - The rule's `split` is a weighted choice: subset *i* gets `weight_i / sum(weights)` of the
//!   rule's requests (weights may sum to anything; 0 sends nothing). The draw comes from the
//!   caller's random source, so tests are deterministic.
//! - A subset is a set of labels: the endpoints carrying all of them. An empty label set means
//!   every endpoint.
//!
//! Regular expressions are compiled once, when the config is loaded ([`RouteTable::new`]),
//! never per request. An invalid one is a load error, so the sidecar rejects (NACKs) the config
//! version and keeps the previous one; the zone validated every regex already, so this only
//! guards against a zone of another version.
//!
//! [`RequestMatcher`] is shared with [`crate::fault`], whose `matches` have the same form.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName};
use rand::Rng;
use regex::Regex;
use strait_proto as pb;

/// A config that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A path or header regex does not compile.
    #[error("{field}: invalid regular expression {pattern:?}: {source}")]
    Regex {
        /// Where in the config, e.g. `routes[0].matches[1].path_regex`.
        field: String,
        pattern: String,
        #[source]
        source: Box<regex::Error>,
    },
    /// A header name that HTTP does not allow.
    #[error("{field}: invalid header name {name:?}")]
    HeaderName { field: String, name: String },
}

/// The parts of a request that matching looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a http::Method,
    /// The URI path, without the query string.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

// === Subset ===

/// A subset of a service's endpoints: those carrying all of `labels`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Subset {
    labels: BTreeMap<String, String>,
    /// `labels` as the tunnel's subset header carries them, made once.
    wire: Arc<str>,
}

impl Subset {
    pub fn new(labels: BTreeMap<String, String>) -> Self {
        let wire = strait_proto::tunnel::encode_subset(&labels).into();
        Self { labels, wire }
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    /// The labels as the value of the tunnel's subset header.
    pub fn wire(&self) -> &Arc<str> {
        &self.wire
    }

    /// Whether a zone's report of `labels` is this subset's.
    pub fn is(&self, labels: &HashMap<String, String>) -> bool {
        labels.len() == self.labels.len() && self.matches(labels)
    }

    /// Whether an endpoint with `endpoint_labels` belongs to the subset.
    pub fn matches(&self, endpoint_labels: &HashMap<String, String>) -> bool {
        self.labels
            .iter()
            .all(|(k, v)| endpoint_labels.get(k) == Some(v))
    }
}

// === RequestMatcher ===

/// One compiled `RouteMatch`: every condition that is set must hold.
#[derive(Debug, Clone)]
pub struct RequestMatcher {
    path_exact: Option<String>,
    path_prefix: Option<String>,
    path_regex: Option<Regex>,
    method: Option<String>,
    headers: Vec<HeaderMatcher>,
}

#[derive(Debug, Clone)]
struct HeaderMatcher {
    name: HeaderName,
    condition: HeaderCondition,
}

#[derive(Debug, Clone)]
enum HeaderCondition {
    Exact(String),
    Prefix(String),
    Regex(Regex),
    Present(bool),
}

impl RequestMatcher {
    /// Compiles `m`; `field` names it in errors (`routes[0].matches[1]`).
    pub fn new(m: &pb::RouteMatch, field: &str) -> Result<Self, RouteError> {
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let path_regex = if m.path_regex.is_empty() {
            None
        } else {
            Some(anchored(&m.path_regex, format!("{field}.path_regex"))?)
        };
        let headers = m
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| HeaderMatcher::new(h, &format!("{field}.headers[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            path_exact: non_empty(&m.path_exact),
            path_prefix: non_empty(&m.path_prefix),
            path_regex,
            method: non_empty(&m.method),
            headers,
        })
    }

    /// Whether the request satisfies every condition of this match.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        self.path_exact.as_deref().is_none_or(|p| req.path == p)
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| req.path.starts_with(p))
            && self
                .path_regex
                .as_ref()
                .is_none_or(|r| r.is_match(req.path))
            && self
                .method
                .as_deref()
                .is_none_or(|m| req.method.as_str() == m)
            && self.headers.iter().all(|h| h.matches(req.headers))
    }
}

/// Compiles a list of matches; `any_matches` then says whether a request is taken.
pub(crate) fn compile_matches(
    matches: &[pb::RouteMatch],
    field: &str,
) -> Result<Vec<RequestMatcher>, RouteError> {
    matches
        .iter()
        .enumerate()
        .map(|(i, m)| RequestMatcher::new(m, &format!("{field}[{i}]")))
        .collect()
}

/// An empty list takes every request; otherwise any one match must hold.
pub(crate) fn any_matches(matchers: &[RequestMatcher], req: &RequestView<'_>) -> bool {
    matchers.is_empty() || matchers.iter().any(|m| m.matches(req))
}

impl HeaderMatcher {
    fn new(h: &pb::HeaderMatch, field: &str) -> Result<Self, RouteError> {
        // `HeaderName` parsing lower-cases, which is what makes the match case-insensitive.
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| RouteError::HeaderName {
                field: format!("{field}.name"),
                name: h.name.clone(),
            })?;
        use pb::header_match::Match;
        let condition = match &h.r#match {
            Some(Match::Exact(v)) => HeaderCondition::Exact(v.clone()),
            Some(Match::Prefix(v)) => HeaderCondition::Prefix(v.clone()),
            Some(Match::Regex(r)) => HeaderCondition::Regex(anchored(r, format!("{field}.regex"))?),
            Some(Match::Present(p)) => HeaderCondition::Present(*p),
            // The zone always sets one; a bare name reads most naturally as "present".
            None => HeaderCondition::Present(true),
        };
        Ok(Self { name, condition })
    }

    fn matches(&self, headers: &HeaderMap) -> bool {
        // Values that are not valid UTF-8 can only satisfy `present`.
        let mut texts = headers
            .get_all(&self.name)
            .iter()
            .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok());
        match &self.condition {
            HeaderCondition::Present(want) => headers.contains_key(&self.name) == *want,
            HeaderCondition::Exact(e) => texts.any(|v| v == e),
            HeaderCondition::Prefix(p) => texts.any(|v| v.starts_with(p.as_str())),
            HeaderCondition::Regex(r) => texts.any(|v| r.is_match(v)),
        }
    }
}

/// Compiles `pattern` so that it must match the whole input, as the docs promise.
fn anchored(pattern: &str, field: String) -> Result<Regex, RouteError> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|source| RouteError::Regex {
        field,
        pattern: pattern.to_owned(),
        source: Box::new(source),
    })
}

// === RouteTable ===

/// The compiled `TrafficRoute` of one service.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    matches: Vec<RequestMatcher>,
    /// `None` is "every endpoint" (a split entry without labels).
    split: Vec<(Option<Subset>, u32)>,
    total_weight: u64,
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteDecision<'a> {
    /// Index of the rule that took the request; `None` when no rule did.
    pub rule: Option<usize>,
    /// The subset to balance over; `None` means every endpoint.
    pub subset: Option<&'a Subset>,
}

impl RouteTable {
    /// Compiles the routes of a service (regexes included).
    pub fn new(routes: &[pb::Route]) -> Result<Self, RouteError> {
        let rules = routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let matches = compile_matches(&r.matches, &format!("routes[{i}].matches"))?;
                let split: Vec<(Option<Subset>, u32)> = r
                    .split
                    .iter()
                    .map(|s| {
                        let subset = (!s.labels.is_empty())
                            .then(|| Subset::new(s.labels.clone().into_iter().collect()));
                        (subset, s.weight)
                    })
                    .collect();
                let total_weight = split.iter().map(|(_, w)| u64::from(*w)).sum();
                Ok(Rule {
                    matches,
                    split,
                    total_weight,
                })
            })
            .collect::<Result<_, RouteError>>()?;
        Ok(Self { rules })
    }

    /// The route table of a service's policy; no policy means no rules.
    pub fn from_policy(policy: Option<&pb::RoutePolicy>) -> Result<Self, RouteError> {
        policy.map_or_else(|| Ok(Self::default()), |p| Self::new(&p.routes))
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule taking `req`, and the subset its split draws.
    pub fn select<'a>(&'a self, req: &RequestView<'_>, rng: &mut impl Rng) -> RouteDecision<'a> {
        let Some((index, rule)) = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| any_matches(&r.matches, req))
        else {
            return RouteDecision {
                rule: None,
                subset: None,
            };
        };
        RouteDecision {
            rule: Some(index),
            subset: rule.draw(rng),
        }
    }
}

impl Rule {
    fn draw(&self, rng: &mut impl Rng) -> Option<&Subset> {
        // All weights 0 is refused by the zone; should it arrive anyway, sending the rule's
        // requests to every endpoint beats failing them.
        if self.total_weight == 0 {
            return None;
        }
        let mut draw = rng.random_range(0..self.total_weight);
        for (subset, weight) in &self.split {
            let weight = u64::from(*weight);
            if draw < weight {
                return subset.as_ref();
            }
            draw -= weight;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Method};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn subset(version: &str, weight: u32) -> pb::WeightedSubset {
        pb::WeightedSubset {
            labels: labels(&[("version", version)]),
            weight,
        }
    }

    fn header(name: &str, m: pb::header_match::Match) -> pb::HeaderMatch {
        pb::HeaderMatch {
            name: name.to_owned(),
            r#match: Some(m),
        }
    }

    /// The example of docs/policies.md: canary testers and GET /api/v2/ to v2, else 90/10.
    fn canary() -> RouteTable {
        let routes = vec![
            pb::Route {
                matches: vec![
                    pb::RouteMatch {
                        headers: vec![header(
                            "x-canary",
                            pb::header_match::Match::Exact("true".into()),
                        )],
                        ..Default::default()
                    },
                    pb::RouteMatch {
                        path_prefix: "/api/v2/".into(),
                        method: "GET".into(),
                        ..Default::default()
                    },
                ],
                split: vec![subset("v2", 1)],
            },
            pb::Route {
                matches: vec![],
                split: vec![subset("v1", 90), subset("v2", 10)],
            },
        ];
        RouteTable::new(&routes).unwrap()
    }

    fn version<'a>(d: &RouteDecision<'a>) -> Option<&'a str> {
        d.subset
            .and_then(|s| s.labels().get("version"))
            .map(String::as_str)
    }

    #[test]
    fn first_matching_rule_decides() {
        let table = canary();
        let mut rng = StdRng::seed_from_u64(1);
        let empty = HeaderMap::new();
        let get = Method::GET;
        let req = RequestView {
            method: &get,
            path: "/api/v2/items",
            headers: &empty,
        };
        let d = table.select(&req, &mut rng);
        assert_eq!((d.rule, version(&d)), (Some(0), Some("v2")));

        // Same path with POST is not taken by rule 0, unless the header says so; the header
        // name matches whatever its case on the wire.
        let post = Method::POST;
        let req = RequestView {
            method: &post,
            ..req
        };
        assert_eq!(table.select(&req, &mut rng).rule, Some(1));
        let mut canary = HeaderMap::new();
        canary.insert("X-Canary", HeaderValue::from_static("true"));
        let req = RequestView {
            headers: &canary,
            ..req
        };
        assert_eq!(table.select(&req, &mut rng).rule, Some(0));
    }

    #[test]
    fn split_90_10_within_5_points_over_2000_draws() {
        let table = canary();
        let mut rng = StdRng::seed_from_u64(42);
        let headers = HeaderMap::new();
        let get = Method::GET;
        let req = RequestView {
            method: &get,
            path: "/",
            headers: &headers,
        };
        let v2 = (0..2000)
            .filter(|_| version(&table.select(&req, &mut rng)) == Some("v2"))
            .count();
        // 10% of 2000 = 200; ±5 points = ±100.
        assert!((100..=300).contains(&v2), "v2 got {v2} of 2000");
        let v2_pct = v2 as f64 / 20.0;
        assert!((v2_pct - 10.0).abs() <= 5.0);
    }

    #[test]
    fn no_rule_means_no_subset_and_weight_zero_drains() {
        let routes = vec![pb::Route {
            matches: vec![pb::RouteMatch {
                path_exact: "/only".into(),
                ..Default::default()
            }],
            split: vec![subset("v1", 0), subset("v2", 3)],
        }];
        let table = RouteTable::new(&routes).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let headers = HeaderMap::new();
        let get = Method::GET;
        let other = RequestView {
            method: &get,
            path: "/only/not",
            headers: &headers,
        };
        assert_eq!(
            table.select(&other, &mut rng),
            RouteDecision {
                rule: None,
                subset: None
            }
        );
        let only = RequestView {
            path: "/only",
            ..other
        };
        for _ in 0..200 {
            assert_eq!(version(&table.select(&only, &mut rng)), Some("v2"));
        }
        assert!(RouteTable::from_policy(None).unwrap().is_empty());
    }

    #[test]
    fn path_conditions() {
        let m = |pm: pb::RouteMatch| RequestMatcher::new(&pm, "m").unwrap();
        let headers = HeaderMap::new();
        let get = Method::GET;
        let at = |path: &'static str| RequestView {
            method: &get,
            path,
            headers: &headers,
        };
        let prefix = m(pb::RouteMatch {
            path_prefix: "/api".into(),
            ..Default::default()
        });
        assert!(prefix.matches(&at("/api")));
        assert!(prefix.matches(&at("/apix")), "a plain string prefix");
        assert!(!prefix.matches(&at("/ap")));
        let exact = m(pb::RouteMatch {
            path_exact: "/a".into(),
            ..Default::default()
        });
        assert!(exact.matches(&at("/a")) && !exact.matches(&at("/a/")));
        // Regexes must match the whole path, even without ^ and $.
        let re = m(pb::RouteMatch {
            path_regex: "/users/[0-9]+".into(),
            ..Default::default()
        });
        assert!(re.matches(&at("/users/42")));
        assert!(!re.matches(&at("/users/42/edit")));
        assert!(!re.matches(&at("/x/users/42")));
        // An alternation is anchored as a whole, not just its first branch.
        let alt = m(pb::RouteMatch {
            path_regex: "/a|/b".into(),
            ..Default::default()
        });
        assert!(alt.matches(&at("/b")) && !alt.matches(&at("/bc")));
    }

    #[test]
    fn header_conditions() {
        use pb::header_match::Match;
        let matcher = |h: pb::HeaderMatch| {
            RequestMatcher::new(
                &pb::RouteMatch {
                    headers: vec![h],
                    ..Default::default()
                },
                "m",
            )
            .unwrap()
        };
        let get = Method::GET;
        let check = |m: &RequestMatcher, headers: &HeaderMap| {
            m.matches(&RequestView {
                method: &get,
                path: "/",
                headers,
            })
        };
        let mut h = HeaderMap::new();
        h.append("x-user", HeaderValue::from_static("bob"));
        h.append("x-user", HeaderValue::from_static("alice-admin"));
        h.insert(
            "x-bin",
            HeaderValue::from_bytes(b"\xff").unwrap_or(HeaderValue::from_static("")),
        );
        let empty = HeaderMap::new();

        // Any value of a repeated header may satisfy the condition.
        assert!(check(
            &matcher(header("X-User", Match::Exact("bob".into()))),
            &h
        ));
        assert!(check(
            &matcher(header("x-user", Match::Prefix("alice".into()))),
            &h
        ));
        assert!(check(
            &matcher(header("x-user", Match::Regex("[a-z]+-admin".into()))),
            &h
        ));
        assert!(!check(
            &matcher(header("x-user", Match::Regex("admin".into()))),
            &h
        ));
        assert!(!check(
            &matcher(header("x-user", Match::Exact("carol".into()))),
            &h
        ));
        // present: true needs the header, present: false needs it absent.
        assert!(check(&matcher(header("x-bin", Match::Present(true))), &h));
        assert!(!check(
            &matcher(header("x-bin", Match::Present(true))),
            &empty
        ));
        assert!(check(
            &matcher(header("x-bin", Match::Present(false))),
            &empty
        ));
        assert!(!check(&matcher(header("x-bin", Match::Present(false))), &h));
        // A value that is not UTF-8 never equals a string.
        assert!(!check(
            &matcher(header("x-bin", Match::Exact("".into()))),
            &h
        ));
    }

    #[test]
    fn bad_regex_or_header_name_is_a_load_error() {
        let routes = vec![pb::Route {
            matches: vec![pb::RouteMatch {
                path_regex: "(unclosed".into(),
                ..Default::default()
            }],
            split: vec![subset("v1", 1)],
        }];
        let err = RouteTable::new(&routes).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("routes[0].matches[0].path_regex:"),
            "{err}"
        );
        let routes = vec![pb::Route {
            matches: vec![pb::RouteMatch {
                headers: vec![header("bad name", pb::header_match::Match::Present(true))],
                ..Default::default()
            }],
            split: vec![subset("v1", 1)],
        }];
        let err = RouteTable::new(&routes).unwrap_err();
        assert!(matches!(err, RouteError::HeaderName { .. }), "{err}");
    }

    #[test]
    fn subset_matches_endpoints_with_all_labels() {
        let s = Subset::new([("version".to_owned(), "v2".to_owned())].into());
        assert!(s.matches(&labels(&[("version", "v2"), ("zone", "a")])));
        assert!(!s.matches(&labels(&[("version", "v1")])));
        assert!(!s.matches(&labels(&[])));
        assert!(Subset::default().matches(&labels(&[])));
    }
}
