//! The two text formats `/metrics` speaks, from one registry: OpenMetrics
//! for clients that ask for it (Prometheus does), and the classic
//! Prometheus text format (0.0.4) for everyone else, which `promtool check
//! metrics` and older agents read. The registry encodes OpenMetrics; the
//! classic form is derived from it line by line.

use std::collections::HashMap;

/// The OpenMetrics media type.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format's media type.
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header prefers OpenMetrics: it names
/// `application/openmetrics-text` with a weight above zero and at least
/// that of `text/plain` (and of `*/*` when that is all else it names).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    let (mut open, mut plain) = (0.0f32, 0.0f32);
    for range in accept.split(',').take(32) {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let weight = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => open = open.max(weight),
            "text/plain" | "*/*" | "text/*" => plain = plain.max(weight),
            _ => {}
        }
    }
    open > 0.0 && open >= plain
}

/// The classic text form of an OpenMetrics exposition: no `# EOF` or
/// `# UNIT`, counter families named by their `_total` samples, `info`
/// families as gauges named `_info`, and no `_created` samples.
pub fn classic(openmetrics: &str) -> String {
    let mut types: HashMap<&str, &str> = HashMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                types.insert(name, kind);
            }
        }
    }
    let renamed = |name: &str| -> (String, &'static str) {
        match types.get(name).copied() {
            Some("counter") => (format!("{name}_total"), "counter"),
            Some("info") => (format!("{name}_info"), "gauge"),
            Some("gauge") => (name.to_owned(), "gauge"),
            Some("histogram") => (name.to_owned(), "histogram"),
            Some("summary") => (name.to_owned(), "summary"),
            _ => (name.to_owned(), "untyped"),
        }
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {help}\n", renamed(name).0));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_once(' ').map_or(rest, |(n, _)| n);
            let (name, kind) = renamed(name);
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if is_created_sample(line, &types) {
            continue;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Whether `line` is the `_created` sample of a counter family.
fn is_created_sample(line: &str, types: &HashMap<&str, &str>) -> bool {
    let name = line.split(['{', ' ']).next().unwrap_or("");
    name.strip_suffix("_created")
        .is_some_and(|family| types.get(family) == Some(&"counter"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_choose_the_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("text/plain;version=0.0.4")));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("application/openmetrics-text;q=0")));
        assert!(!wants_openmetrics(Some(
            "text/plain;q=0.9, application/openmetrics-text;q=0.5"
        )));
        assert!(wants_openmetrics(Some("Application/OpenMetrics-Text")));
    }

    #[test]
    fn the_classic_form_names_samples_as_their_families() {
        let open = "# HELP exdaas_build Build information.\n# TYPE exdaas_build info\nexdaas_build_info{version=\"0.1.0\"} 1\n\
# HELP exdaas_requests Requests.\n# TYPE exdaas_requests counter\nexdaas_requests_total{route=\"kv_get\"} 3\nexdaas_requests_created{route=\"kv_get\"} 1.5\n\
# HELP exdaas_up Seconds.\n# TYPE exdaas_up gauge\n# UNIT exdaas_up seconds\nexdaas_up 2.5\n# EOF\n";
        let classic = classic(open);
        assert_eq!(
            classic,
            "# HELP exdaas_build_info Build information.\n# TYPE exdaas_build_info gauge\nexdaas_build_info{version=\"0.1.0\"} 1\n\
# HELP exdaas_requests_total Requests.\n# TYPE exdaas_requests_total counter\nexdaas_requests_total{route=\"kv_get\"} 3\n\
# HELP exdaas_up Seconds.\n# TYPE exdaas_up gauge\nexdaas_up 2.5\n"
        );
    }
}
