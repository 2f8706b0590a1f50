//! Rate limits and credits: counted at `/auth/verify` and introspection, per key and per
//! owner, answered with the RateLimit headers (parsed here as Structured Fields) and a 429
//! when over. Refills are judged on a moved clock; replicas share one PostgreSQL database.

use std::time::{Duration, Instant};

use crate::common::*;
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

/// A key generated with `body`'s options; (api_key_ref, token).
async fn limited_key(app: &TestApp, body: &Value) -> (String, String) {
    let (key_ref, api_key, password) = credentials(app, body).await;
    (key_ref, app.token(&api_key, &password).await)
}

/// A key generated with `body`'s options; (api_key_ref, api_key, password).
async fn credentials(app: &TestApp, body: &Value) -> (String, String, String) {
    let r = app.post_json("/auth/keys/generate", body).await;
    assert_eq!(r.status(), StatusCode::OK);
    let key: Value = r.json().await.unwrap();
    let field = |f: &str| key[f].as_str().unwrap().to_owned();
    (field("api_key_ref"), field("api_key"), field("password"))
}

async fn verify(app: &TestApp, token: &str, query: &str) -> Response {
    Client::new().get(app.url(&format!("/auth/verify{query}"))).bearer_auth(token).send().await.unwrap()
}

async fn get_key(app: &TestApp, key_ref: &str) -> Value {
    let r = app.client.get(app.url(&format!("/auth/keys/{key_ref}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

fn used(key: &Value, name: &str) -> u64 {
    let limits = key["limits"].as_array().unwrap();
    limits.iter().find(|l| l["name"] == name).unwrap_or_else(|| panic!("{name} in {key}"))["used"].as_u64().unwrap()
}

/// Sends `n` verifications at once; how many got each status.
async fn burst(apps: &[&TestApp], token: &str, n: usize) -> (usize, usize, usize) {
    let client = Client::new();
    let requests = (0..n).map(|i| {
        let url = apps[i % apps.len()].url("/auth/verify");
        let request = client.get(url).bearer_auth(token).timeout(Duration::from_secs(30));
        async move { request.send().await.unwrap().status() }
    });
    let statuses = futures_util::future::join_all(requests).await;
    let count = |s: StatusCode| statuses.iter().filter(|x| **x == s).count();
    (count(StatusCode::OK), count(StatusCode::TOO_MANY_REQUESTS), statuses.len())
}

/// A Structured Field list header, parsed: (name, parameters as (key, integer)).
fn sf_list(response: &Response, header: &str) -> Vec<(String, Vec<(String, i64)>)> {
    let value = response.headers().get(header).unwrap_or_else(|| panic!("{header}")).to_str().unwrap();
    let list: sfv::List = sfv::Parser::new(value).parse().unwrap_or_else(|e| panic!("{header}: {value}: {e}"));
    list.iter()
        .map(|entry| match entry {
            sfv::ListEntry::Item(item) => {
                let name = item.bare_item.as_string().expect("a string item").as_str().to_owned();
                let params = item
                    .params
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), i64::from(v.as_integer().expect("an integer"))))
                    .collect();
                (name, params)
            }
            sfv::ListEntry::InnerList(_) => panic!("{header}: an inner list"),
        })
        .collect()
}

fn param(policies: &[(String, Vec<(String, i64)>)], name: &str, key: &str) -> Option<i64> {
    policies.iter().find(|(n, _)| n == name)?.1.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

async fn assert_quota_exceeded(response: Response, violated: &[&str]) -> u64 {
    let retry_after = retry_after(&response);
    let state = sf_list(&response, "ratelimit");
    for name in violated {
        let t = param(&state, name, "t").expect("t of a violated policy") as u64;
        assert!(retry_after >= t, "Retry-After {retry_after} before {name}'s t {t}");
        assert_eq!(param(&state, name, "r"), Some(0));
    }
    let problem = assert_problem(response, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(problem["type"], "https://iana.org/assignments/http-problem-types#quota-exceeded");
    assert_eq!(problem["violated-policies"], json!(violated));
    retry_after
}

backends_with_redis! {
    async fn a_fast_limit_is_exact_on_one_server(builder: Builder) {
        let app = builder.spawn().await;
        app.admin_login().await;
        let limits = json!({"limits": [{"name": "burst", "limit": 20, "window_seconds": 3600}]});
        let (key_ref, token) = limited_key(&app, &limits).await;
        let (ok, limited, all) = burst(&[&app], &token, 60).await;
        assert_eq!((ok, limited, all), (20, 40, 60));
        assert_quota_exceeded(verify(&app, &token, "").await, &["burst"]).await;
        assert_eq!(used(&get_key(&app, &key_ref).await, "burst"), 20);

        // A key without limits answers as before: no headers, never refused.
        let (_, plain) = limited_key(&app, &json!({})).await;
        for _ in 0..30 {
            let r = verify(&app, &plain, "").await;
            assert_eq!(r.status(), StatusCode::OK);
            assert!(r.headers().get("ratelimit").is_none() && r.headers().get("ratelimit-policy").is_none());
        }
    }

    async fn the_headers_are_the_drafts_structured_fields(builder: Builder) {
        let app = builder.manual_clock().spawn().await;
        // At a known point of the windows: 30 s into a minute, 12:00:30 UTC.
        let now = app.clock().now();
        app.clock().set(now - now.rem_euclid(86_400) + 43_230);
        app.admin_login().await;
        let body = json!({
            "limits": [
                {"name": "burst", "limit": 10, "window_seconds": 60},
                {"name": "hourly", "limit": 100, "window_seconds": 3600, "consistency": "strict"},
            ],
            "credits": {"remaining": 50, "refill": {"amount": 50, "interval": "daily"}},
        });
        let (_, token) = limited_key(&app, &body).await;
        let r = verify(&app, &token, "").await;
        assert_eq!(r.status(), StatusCode::OK);
        let policy = sf_list(&r, "ratelimit-policy");
        assert_eq!(
            policy,
            vec![
                ("burst".into(), vec![("q".into(), 10), ("w".into(), 60)]),
                ("hourly".into(), vec![("q".into(), 100), ("w".into(), 3600)]),
                ("credits".into(), vec![("q".into(), 50), ("w".into(), 86_400)]),
            ]
        );
        let state = sf_list(&r, "ratelimit");
        assert_eq!(
            state,
            vec![
                ("burst".into(), vec![("r".into(), 9), ("t".into(), 30)]),
                ("hourly".into(), vec![("r".into(), 99), ("t".into(), 3570)]),
                ("credits".into(), vec![("r".into(), 49), ("t".into(), 43_170)]),
            ]
        );
        for _ in 0..9 {
            assert_eq!(verify(&app, &token, "").await.status(), StatusCode::OK);
        }
        let refused = verify(&app, &token, "").await;
        assert_eq!(sf_list(&refused, "ratelimit-policy"), policy);
        let retry = assert_quota_exceeded(refused, &["burst"]).await;
        // Nothing slid out yet: the next minute's start, when the sliding window has room.
        assert!((30..=90).contains(&retry), "{retry}");
    }

    async fn cost_weighs_each_request_and_a_refusal_uses_up_no_other_limit(builder: Builder) {
        let app = builder.spawn().await;
        app.admin_login().await;
        let body = json!({"limits": [
            {"name": "small", "limit": 10, "window_seconds": 3600},
            {"name": "large", "limit": 100, "window_seconds": 3600},
        ]});
        let (key_ref, token) = limited_key(&app, &body).await;
        assert_eq!(verify(&app, &token, "?cost=4").await.status(), StatusCode::OK);
        let r = Client::new().get(app.url("/auth/verify")).bearer_auth(&token).header("X-Request-Cost", "4").send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(param(&sf_list(&r, "ratelimit"), "small", "r"), Some(2));
        assert_quota_exceeded(verify(&app, &token, "?cost=4").await, &["small"]).await;
        let key = get_key(&app, &key_ref).await;
        assert_eq!((used(&key, "small"), used(&key, "large")), (8, 8), "the refusal counted against a limit");
        // Free requests pass even at the limit, and count nothing; the rest of the limit is usable.
        assert_eq!(verify(&app, &token, "?cost=0").await.status(), StatusCode::OK);
        assert_eq!(verify(&app, &token, "?cost=2").await.status(), StatusCode::OK);
        assert_eq!(verify(&app, &token, "?cost=1").await.status(), StatusCode::TOO_MANY_REQUESTS);
        for bad in ["?cost=1001", "?cost=-1", "?cost=x"] {
            assert_problem(verify(&app, &token, bad).await, StatusCode::BAD_REQUEST).await;
        }
        let key = get_key(&app, &key_ref).await;
        assert_eq!((used(&key, "small"), used(&key, "large")), (10, 10));
    }

    async fn an_owners_limits_and_credits_are_shared_by_its_keys(builder: Builder) {
        let app = builder.spawn().await;
        app.admin_login().await;
        let r = app.client.put(app.url("/auth/owners/cus%2042/limits"))
            .json(&json!({"limits": [{"name": "monthly", "limit": 5, "window_seconds": 2678400}], "credits": {"remaining": 100}}))
            .send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
        let (_, first) = limited_key(&app, &json!({"owner": "cus 42"})).await;
        let (_, second) = limited_key(&app, &json!({"owner": "cus 42", "limits": [{"name": "own", "limit": 100, "window_seconds": 60}]})).await;
        let (_, stranger) = limited_key(&app, &json!({"owner": "cus 43"})).await;
        for _ in 0..3 {
            let r = verify(&app, &first, "").await;
            assert_eq!(r.status(), StatusCode::OK);
            let state = sf_list(&r, "ratelimit");
            assert!(param(&state, "owner.monthly", "r").is_some(), "{state:?}");
        }
        for _ in 0..2 {
            assert_eq!(verify(&app, &second, "").await.status(), StatusCode::OK);
        }
        assert_quota_exceeded(verify(&app, &second, "").await, &["owner.monthly"]).await;
        assert_quota_exceeded(verify(&app, &first, "").await, &["owner.monthly"]).await;
        assert_eq!(verify(&app, &stranger, "").await.status(), StatusCode::OK, "another owner's budget");

        let r = app.client.get(app.url("/auth/owners/cus%2042/limits")).send().await.unwrap();
        let owner: Value = r.json().await.unwrap();
        assert_eq!(owner["owner"], "cus 42");
        assert_eq!(owner["limits"][0]["used"], 5);
        assert_eq!(owner["credits"]["remaining"], 95);

        let r = app.client.get(app.url("/auth/audit?limit=100")).send().await.unwrap();
        let audit: Value = r.json().await.unwrap();
        let actions: Vec<&str> = audit["events"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
        assert!(actions.contains(&"owner.limits_changed"), "{actions:?}");
    }

    async fn credits_run_out_and_refill_at_the_intervals_edge(builder: Builder) {
        let app = builder.manual_clock().spawn().await;
        // Ten seconds before midnight UTC.
        let now = app.clock().now();
        app.clock().set(now - now.rem_euclid(86_400) + 86_400 - 10);
        app.admin_login().await;
        let body = json!({"credits": {"remaining": 3, "refill": {"amount": 5, "interval": "daily"}}});
        let (key_ref, api_key, password) = credentials(&app, &body).await;
        let token = app.token(&api_key, &password).await;
        for _ in 0..3 {
            assert_eq!(verify(&app, &token, "").await.status(), StatusCode::OK);
        }
        let retry = assert_quota_exceeded(verify(&app, &token, "").await, &["credits"]).await;
        assert_eq!(retry, 10, "until midnight");
        app.clock().advance(Duration::from_secs(9));
        assert_eq!(verify(&app, &token, "").await.status(), StatusCode::TOO_MANY_REQUESTS);
        app.clock().advance(Duration::from_secs(1));
        for _ in 0..5 {
            assert_eq!(verify(&app, &token, "").await.status(), StatusCode::OK);
        }
        assert_eq!(verify(&app, &token, "").await.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(get_key(&app, &key_ref).await["credits"]["remaining"], 0);

        // A top-up, then a balance set anew.
        let patch = |body: Value| app.client.patch(app.url(&format!("/auth/keys/{key_ref}"))).json(&body).send();
        let r = patch(json!({"credits": {"add": 2}})).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.json::<Value>().await.unwrap()["credits"]["remaining"], 2);
        for _ in 0..2 {
            assert_eq!(verify(&app, &token, "").await.status(), StatusCode::OK);
        }
        assert_eq!(verify(&app, &token, "").await.status(), StatusCode::TOO_MANY_REQUESTS);
        let r = patch(json!({"credits": {"remaining": 1}})).await.unwrap();
        assert_eq!(r.json::<Value>().await.unwrap()["credits"], json!({"remaining": 1, "refill": null}));
        assert_eq!(verify(&app, &token, "").await.status(), StatusCode::OK);
        assert_eq!(verify(&app, &token, "").await.status(), StatusCode::TOO_MANY_REQUESTS);
        // A fixed budget has no refill: a day later it is still spent.
        app.clock().advance(Duration::from_secs(86_400));
        let token = app.token(&api_key, &password).await;
        assert_eq!(verify(&app, &token, "").await.status(), StatusCode::TOO_MANY_REQUESTS);
    }

    async fn introspection_counts_and_a_token_over_its_limit_is_inactive(builder: Builder) {
        let app = builder.spawn().await;
        app.admin_login().await;
        let r = app.post_json("/auth/keys/generate", &json!({"limits": [{"name": "burst", "limit": 2, "window_seconds": 3600}]})).await;
        let key: Value = r.json().await.unwrap();
        let (api_key, password) = (key["api_key"].as_str().unwrap(), key["password"].as_str().unwrap());
        let token = app.token(api_key, password).await;
        let introspect = || async {
            let r = Client::new().post(app.url("/oauth/introspect")).basic_auth(api_key, Some(password))
                .form(&[("token", token.as_str())]).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.unwrap()["active"].as_bool().unwrap()
        };
        assert!(introspect().await);
        assert_eq!(verify(&app, &token, "").await.status(), StatusCode::OK);
        assert!(!introspect().await, "over its limit");
        assert_eq!(verify(&app, &token, "").await.status(), StatusCode::TOO_MANY_REQUESTS);
    }

    async fn bad_limits_are_refused_naming_the_field(builder: Builder) {
        let app = builder.spawn().await;
        app.admin_login().await;
        let limit = |l: Value| json!({"limits": [l]});
        let cases = [
            (limit(json!({"name": "a", "limit": 0, "window_seconds": 60})), "limit"),
            (limit(json!({"name": "a", "limit": -5, "window_seconds": 60})), "limit"),
            (limit(json!({"name": "a", "limit": 5, "window_seconds": 2_678_401})), "window_seconds"),
            (limit(json!({"name": "a", "limit": 5, "window_seconds": 0})), "window_seconds"),
            (limit(json!({"name": "a", "limit": 5, "window_seconds": 60, "consistency": "eventual"})), "consistency"),
            (limit(json!({"name": "A b", "limit": 5, "window_seconds": 60})), "name"),
            (limit(json!({"name": "a", "limit": 5})), "window_seconds"),
            (json!({"limits": (0..6).map(|i| json!({"name": format!("l{i}"), "limit": 1, "window_seconds": 1})).collect::<Vec<_>>()}), "at most 5"),
            (json!({"limits": [{"name": "a", "limit": 1, "window_seconds": 1}, {"name": "a", "limit": 2, "window_seconds": 2}]}), "once"),
            (json!({"credits": {"remaining": -1}}), "credits.remaining"),
            (json!({"credits": {"remaining": 1, "refill": {"amount": 0, "interval": "daily"}}}), "credits.refill.amount"),
            (json!({"credits": {"remaining": 1, "refill": {"amount": 1, "interval": "weekly"}}}), "credits.refill.interval"),
            (json!({"credits": {"remaining": 1, "refill": {"amount": 1, "interval": "monthly", "day": 31}}}), "credits.refill.day"),
            (json!({"owner": ""}), "owner"),
        ];
        for (body, field) in &cases {
            let r = app.post_json("/auth/keys/generate", body).await;
            let problem = assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
            assert!(problem["detail"].as_str().unwrap().contains(field), "{body}: {problem}");
        }
        assert!(app.list_keys().await.is_empty());
        let (key_ref, _) = limited_key(&app, &json!({})).await;
        for (body, field) in [
            (json!({"limits": [{"name": "a", "limit": 0, "window_seconds": 60}]}), "limit"),
            (json!({"credits": {"add": 0}}), "credits.add"),
            (json!({"credits": {"add": 1, "remaining": 2}}), "credits"),
        ] {
            let r = app.client.patch(app.url(&format!("/auth/keys/{key_ref}"))).json(&body).send().await.unwrap();
            let problem = assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
            assert!(problem["detail"].as_str().unwrap().contains(field), "{body}: {problem}");
        }
        let r = app.client.put(app.url("/auth/owners/x/limits")).json(&json!({"limits": [{"name": "a", "limit": 1, "window_seconds": 99_999_999}]})).send().await.unwrap();
        let problem = assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert!(problem["detail"].as_str().unwrap().contains("window_seconds"), "{problem}");
        let key = get_key(&app, &key_ref).await;
        assert_eq!((key["limits"].clone(), key["credits"].clone()), (json!([]), Value::Null));
    }
}

#[tokio::test]
async fn credits_spent_on_one_server_survive_a_sigterm() {
    credits_survive_a_sigterm(Builder::sqlite()).await;
}

#[tokio::test]
async fn credits_spent_through_redis_survive_a_sigterm() {
    let Some(redis) = RedisServer::start().await else { return };
    credits_survive_a_sigterm(Builder::sqlite().redis(&redis)).await;
}

/// Spends credits, stops the server with SIGTERM, and reads the balance back from the store
/// alone (a server without Redis).
async fn credits_survive_a_sigterm(builder: Builder) {
    let mut app = builder.process().spawn().await;
    app.admin_login().await;
    let (key_ref, token) = limited_key(&app, &json!({"credits": {"remaining": 1000}})).await;
    for _ in 0..25 {
        assert_eq!(verify(&app, &token, "?cost=2").await.status(), StatusCode::OK);
    }
    assert!(app.terminate().await.success());
    let app = app.sibling().without_env("KEYGATE_REDIS_URL").spawn().await;
    app.admin_login().await;
    assert_eq!(get_key(&app, &key_ref).await["credits"]["remaining"], 950);
}

/// Two replicas sharing a strict limit: 400 concurrent requests, spread over both, admit
/// exactly the limit.
async fn a_strict_limit_across_two_replicas_admits_exactly_its_limit(builder: Builder) {
    // Alone: a take that waits past the 100 ms bound on a machine busy with other tests
    // would be decided by the failure setting instead.
    let a = builder.alone().spawn().await;
    let b = a.replica().alone().spawn().await;
    a.admin_login().await;
    let body = json!({"limits": [{"name": "strict", "limit": 100, "window_seconds": 3600, "consistency": "strict"}]});
    // Connections opened first, as a running server has them: one opened for a take
    // would count against its 100 ms.
    let (_, warm_up) = limited_key(&a, &body).await;
    burst(&[&a, &b], &warm_up, 40).await;
    let (_, token) = limited_key(&a, &body).await;
    let (ok, limited, all) = burst(&[&a, &b], &token, 400).await;
    assert_eq!((ok, limited, all), (100, 300, 400));
}

#[tokio::test]
async fn a_strict_limit_across_two_replicas_on_postgresql_admits_exactly_its_limit() {
    let Some(builder) = Builder::postgres().await else { return };
    a_strict_limit_across_two_replicas_admits_exactly_its_limit(builder).await;
}

#[tokio::test]
async fn a_strict_limit_across_two_replicas_on_redis_admits_exactly_its_limit() {
    let Some(redis) = RedisServer::start().await else { return };
    let Some(builder) = Builder::postgres().await else { return };
    a_strict_limit_across_two_replicas_admits_exactly_its_limit(builder.redis(&redis)).await;
}

/// A fast limit on two replicas overshoots by at most what the other replica admitted since
/// it last heard of this one's counts: with 60 of 100 used and shared, a burst over both
/// admits at most 40 on each, 140 in all, and never less than the limit.
async fn a_fast_limits_overshoot_across_two_replicas_stays_within_the_bound(builder: Builder) {
    let a = builder.spawn().await;
    let b = a.replica().spawn().await;
    a.admin_login().await;
    let body = json!({"limits": [{"name": "fast", "limit": 100, "window_seconds": 3600}]});
    let (key_ref, token) = limited_key(&a, &body).await;
    // One on B, so that B counts this key and follows its shared count.
    assert_eq!(verify(&b, &token, "").await.status(), StatusCode::OK);
    for _ in 0..59 {
        assert_eq!(verify(&a, &token, "").await.status(), StatusCode::OK);
    }
    // Each hears of the other's counts within a sync or two.
    for app in [&a, &b] {
        let started = Instant::now();
        loop {
            let r = a.client.get(app.url(&format!("/auth/keys/{key_ref}"))).send().await.unwrap();
            let key: Value = r.json().await.unwrap();
            if used(&key, "fast") >= 60 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "a replica never heard of the other's counts: {key}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (ok, _, _) = burst(&[&a, &b], &token, 200).await;
    let admitted = 60 + ok;
    assert!((100..=140).contains(&admitted), "admitted {admitted} of a limit of 100 (bound 140)");
}

#[tokio::test]
async fn a_fast_limits_overshoot_across_two_replicas_on_postgresql_stays_within_the_bound() {
    let Some(builder) = Builder::postgres().await else { return };
    a_fast_limits_overshoot_across_two_replicas_stays_within_the_bound(builder).await;
}

#[tokio::test]
async fn a_fast_limits_overshoot_across_two_replicas_on_redis_stays_within_the_bound() {
    let Some(redis) = RedisServer::start().await else { return };
    let Some(builder) = Builder::postgres().await else { return };
    a_fast_limits_overshoot_across_two_replicas_stays_within_the_bound(builder.redis(&redis)).await;
}

/// Redis killed and started again (empty) while two replicas answer a steady load of a key
/// with credits and a strict limit: no request waits long, the strict limit follows the
/// failure setting meanwhile, and every credit spent is spent once, in Redis's new copy and
/// in the store alike.
async fn redis_stopped_and_started_during_load(on_failure: &str) {
    let Some(redis) = RedisServer::start().await else { return };
    let Some(builder) = Builder::postgres().await else { return };
    // Alone: with `closed`, a take slower than 100 ms on a machine busy with other tests
    // would be refused, rightly, and the counts below would not add up.
    let a = builder.redis(&redis).env("KEYGATE_LIMITS_ON_FAILURE", on_failure).process().alone().spawn().await;
    let b = a.replica().alone().spawn().await;
    a.admin_login().await;
    let body = json!({
        "limits": [{"name": "strict", "limit": 100000, "window_seconds": 3600, "consistency": "strict"}],
        "credits": {"remaining": 100000},
    });
    let (key_ref, token) = limited_key(&a, &body).await;
    let client = Client::new();
    let statuses = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let load = |app: &TestApp, phase: &'static str| {
        let (client, token, statuses, url) = (client.clone(), token.clone(), statuses.clone(), app.url("/auth/verify"));
        async move {
            for _ in 0..40 {
                // Generous for a loaded machine; a request waiting on a dead Redis would
                // wait for its TCP timeout, minutes.
                let r = client.get(&url).bearer_auth(&token).timeout(Duration::from_secs(10)).send().await;
                let status = r.unwrap_or_else(|e| panic!("{phase}: no answer within 10 s: {e}")).status();
                statuses.lock().unwrap().push((phase, status));
            }
        }
    };
    let both = |phase| futures_util::future::join(load(&a, phase), load(&b, phase));
    both("up").await;
    redis.stop();
    both("down").await;
    for app in [&a, &b] {
        assert_eq!(limit_state_reachable(app).await, 0, "the metric says so");
    }
    redis.start_again().await;
    // Each replica reconnects within a few syncs; from then on Redis decides again.
    for app in [&a, &b] {
        let started = Instant::now();
        while limit_state_reachable(app).await != 1 {
            assert!(started.elapsed() < Duration::from_secs(30), "never reconnected");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    both("up again").await;

    let statuses = statuses.lock().unwrap().clone();
    let count = |phase: &str, status: StatusCode| statuses.iter().filter(|(p, s)| *p == phase && *s == status).count();
    assert_eq!(count("up", StatusCode::OK), 80);
    match on_failure {
        "open" => assert_eq!(count("down", StatusCode::OK), 80, "{statuses:?}"),
        _ => assert_eq!(count("down", StatusCode::SERVICE_UNAVAILABLE), 80, "{statuses:?}"),
    }
    assert_eq!(count("up again", StatusCode::OK), 80);

    let admitted = statuses.iter().filter(|(_, s)| *s == StatusCode::OK).count() as i64;

    // Within a few syncs Redis's copy (what a server with Redis shows) is down by exactly
    // what was admitted, and stays so; the store (what a server without Redis shows) too.
    let expected = 100_000 - admitted;
    let started = Instant::now();
    while get_key(&a, &key_ref).await["credits"]["remaining"] != expected {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "Redis's copy: {} != {expected}",
            get_key(&a, &key_ref).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(SYNCS).await;
    assert_eq!(get_key(&a, &key_ref).await["credits"]["remaining"], expected, "Redis's copy, later");
    let store = a.replica().without_env("KEYGATE_REDIS_URL").spawn().await;
    store.admin_login().await;
    assert_eq!(get_key(&store, &key_ref).await["credits"]["remaining"], expected, "the store");
    let mut a = a;
    assert!(a.terminate().await.success());
    assert!(a.logs().contains("limit state unreachable"), "a warning says so");
}

/// `keygate_limit_state_reachable` on `app`'s `/metrics`.
async fn limit_state_reachable(app: &TestApp) -> u8 {
    let (_, samples) = crate::common::metrics::scrape(&app.url("/metrics")).await;
    assert!(samples.has("keygate_limit_state_reachable"), "the gauge");
    samples.get("keygate_limit_state_reachable") as u8
}

/// A few rounds of the limits' upkeep.
const SYNCS: Duration = Duration::from_millis(2000);

#[tokio::test]
async fn redis_stopped_and_started_during_load_strict_limits_stay_open() {
    redis_stopped_and_started_during_load("open").await;
}

#[tokio::test]
async fn redis_stopped_and_started_during_load_strict_limits_close() {
    redis_stopped_and_started_during_load("closed").await;
}

/// The Redis scripts' `le`, which decides every strict limit there: exact where doubles alone
/// are not. Products of counts up to the largest limit (10^12) and windows up to 31 days that
/// differ by -1, 0 or 1, judged against i128.
#[tokio::test]
async fn the_redis_scripts_compare_products_exactly() {
    let Some(redis) = RedisServer::start().await else { return };
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let script = redis::Script::new(&format!(
        "{}\nreturn le(tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])) and 1 or 0",
        keygate::fuzzing::REDIS_LE
    ));
    // A fixed xorshift, so that a failure repeats.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |below: i128| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        i128::from(x) % below
    };
    let inverse = |b: i128, m: i128| {
        // Extended Euclid: b * inverse ≡ 1 (mod m).
        let (mut r0, mut r1, mut s0, mut s1) = (m, b, 0i128, 1i128);
        while r1 != 0 {
            let q = r0 / r1;
            (r0, r1, s0, s1) = (r1, r0 - q * r1, s1, s0 - q * s1);
        }
        (r0 == 1).then(|| s0.rem_euclid(m))
    };
    let mut judged = 0;
    while judged < 600 {
        let d = 1_000 + next(2_678_400 - 1_000);
        let b = 1 + next(d);
        let Some(b_inverse) = inverse(b, d) else { continue };
        let r = next(3) - 1;
        // a * b - c * d = r: a ≡ r / b (mod d), then as large as a limit may be.
        let a0 = (r * b_inverse).rem_euclid(d);
        let a = a0 + d * next((1_000_000_000_000 - a0) / d + 1);
        let c = (a * b - r) / d;
        assert_eq!(a * b - c * d, r);
        let exact: i64 =
            script.arg(a as i64).arg(b as i64).arg(c as i64).arg(d as i64).invoke_async(&mut connection).await.unwrap();
        assert_eq!(exact == 1, r <= 0, "le({a}, {b}, {c}, {d}) with a * b - c * d = {r}");
        judged += 1;
    }
}
