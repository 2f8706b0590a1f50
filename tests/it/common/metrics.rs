//! `/metrics` as a test reads it: the exposition's samples by series.

use std::collections::HashMap;

use reqwest::{Client, StatusCode};

/// The exposition's samples: `name{labels}` (labels sorted) to value.
pub struct Samples(HashMap<String, f64>);

impl Samples {
    pub fn parse(text: &str) -> Self {
        let mut samples = HashMap::new();
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
            samples.insert(normalise(series), value.parse().unwrap_or_else(|_| panic!("not a value: {line}")));
        }
        Self(samples)
    }

    /// The sample `name{labels}`, labels in any order; 0 when absent.
    pub fn get(&self, series: &str) -> f64 {
        self.0.get(&normalise(series)).copied().unwrap_or(0.0)
    }

    pub fn has(&self, series: &str) -> bool {
        self.0.contains_key(&normalise(series))
    }

    pub fn families(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(|k| k.split('{').next().unwrap())
    }
}

fn normalise(series: &str) -> String {
    let Some((name, labels)) = series.split_once('{') else { return series.to_owned() };
    let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').filter(|l| !l.is_empty()).collect();
    labels.sort_unstable();
    format!("{name}{{{}}}", labels.join(","))
}

pub async fn scrape(url: &str) -> (String, Samples) {
    let r = Client::new().get(url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = r.text().await.unwrap();
    let samples = Samples::parse(&text);
    (text, samples)
}
