//! Reading metrics the way a test checks them: one sample's value by name and labels, from a
//! component's Prometheus registry in-process, or from the text an admin `/metrics` endpoint
//! serves (the `prometheus` crate encodes that text but has no parser; [`sample`] reads the
//! simple lines Strait writes).

use prometheus::proto::MetricType;

/// The value of the first series of `name` that has all of `labels` (a counter's or gauge's
/// value, a histogram's sample count), or `None` if there is none yet (a labelled series
/// appears once it is first touched).
pub fn value(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let family = registry.gather().into_iter().find(|f| f.name() == name)?;
    let series = family.get_metric().iter().find(|m| {
        labels.iter().all(|(k, v)| {
            m.get_label()
                .iter()
                .any(|l| l.name() == *k && l.value() == *v)
        })
    })?;
    Some(match family.get_field_type() {
        MetricType::GAUGE => series.get_gauge().get_value(),
        MetricType::COUNTER => series.get_counter().get_value(),
        MetricType::HISTOGRAM => series.get_histogram().get_sample_count() as f64,
        _ => f64::NAN,
    })
}

/// [`value`] of a series the test expects to exist; panics if it is missing.
pub fn metric(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(registry, name, labels).unwrap_or_else(|| panic!("metric {name}{labels:?} missing"))
}

/// The value of the sample `name` with exactly `labels` (in any order) in a Prometheus text
/// page; `&[]` is the unlabelled sample.
pub fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (sample_name, sample_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.strip_suffix('}')?)?),
                None => (series, Vec::new()),
            };
            let same = sample_name == name
                && sample_labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| sample_labels.iter().any(|(sk, sv)| sk == k && sv == v));
            if same { value.parse().ok() } else { None }
        })
}

/// `a="1",b="2"` as pairs (values with no quote or comma in them, as Strait's are).
fn parse_labels(text: &str) -> Option<Vec<(&str, &str)>> {
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k, v.strip_prefix('"')?.strip_suffix('"')?))
        })
        .collect()
}

/// The text of `GET /metrics` at `admin` (`host:port`), or `None` unless it answered 200.
pub async fn scrape(admin: &str) -> Option<String> {
    let (status, page) = crate::http::get(admin, "/metrics").await;
    (status == 200).then_some(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
# HELP strait_zone_sync_connected Whether the zone is connected.
# TYPE strait_zone_sync_connected gauge
strait_zone_sync_connected 1
strait_zone_sync_connected_total 7
strait_gateway_streams{zone=\"b\",result=\"ok\"} 3
strait_gateway_streams{zone=\"c\",result=\"ok\"} 4
";

    #[test]
    fn reads_unlabelled_and_labelled_samples() {
        assert_eq!(sample(PAGE, "strait_zone_sync_connected", &[]), Some(1.0));
        assert_eq!(
            sample(
                PAGE,
                "strait_gateway_streams",
                &[("result", "ok"), ("zone", "c")]
            ),
            Some(4.0)
        );
        // A name that is a prefix of another, a partial label set, an absent series.
        assert_eq!(sample(PAGE, "strait_zone_sync", &[]), None);
        assert_eq!(
            sample(PAGE, "strait_gateway_streams", &[("zone", "b")]),
            None
        );
        assert_eq!(sample(PAGE, "strait_gateway_streams", &[]), None);
    }

    #[test]
    fn reads_a_registry() {
        let registry = prometheus::Registry::new();
        let counter = prometheus::IntCounterVec::new(
            prometheus::Opts::new("strait_test_total", "test"),
            &["kind"],
        )
        .unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.with_label_values(&["a"]).inc_by(2);
        assert_eq!(
            metric(&registry, "strait_test_total", &[("kind", "a")]),
            2.0
        );
        assert_eq!(
            value(&registry, "strait_test_total", &[("kind", "b")]),
            None
        );
    }
}
