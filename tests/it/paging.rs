//! `GET /auth/keys/list` a page at a time (`?limit=&after=`), and unchanged without them.

use crate::common::*;
use reqwest::{Client, Response, StatusCode};
use serde_json::Value;

async fn list(client: &Client, app: &TestApp, query: &str) -> Response {
    client.get(app.url(&format!("/auth/keys/list{query}"))).send().await.unwrap()
}

/// The (api_key_ref, api_key) pairs of a list response.
async fn keys_of(response: Response) -> Vec<(String, String)> {
    assert_eq!(response.status(), StatusCode::OK);
    let body: Vec<Value> = response.json().await.unwrap();
    body.iter()
        .map(|k| (k["api_key_ref"].as_str().unwrap().to_owned(), k["api_key"].as_str().unwrap().to_owned()))
        .collect()
}

/// The target of a `Link: <…>; rel="next"` header.
fn next_link(response: &Response) -> Option<String> {
    let link = response.headers().get("link")?.to_str().unwrap().to_owned();
    let (target, params) = link.split_once(';').unwrap();
    assert_eq!(params.trim(), "rel=\"next\"");
    Some(target.trim().trim_start_matches('<').trim_end_matches('>').to_owned())
}

backends! {
async fn pages_follow_the_link_and_add_up_to_the_whole_list(builder: Builder) {
    let app = builder.spawn().await;
    app.admin_login().await;
    for _ in 0..7 {
        app.generate_key().await;
    }
    // No parameters: every key, oldest first, no Link: the documented shape, unchanged.
    let r = list(&app.client, &app, "").await;
    assert!(r.headers().get("link").is_none());
    let all = keys_of(r).await;
    assert_eq!(all.len(), 7);

    // Pages of 3 by following the links (keys made within one second share created_at,
    // so the order within a page rests on the ref tie-break).
    let mut paged = Vec::new();
    let mut next = Some("/auth/keys/list?limit=3".to_owned());
    let mut pages = 0;
    while let Some(path) = next {
        let r = app.client.get(app.url(&path)).send().await.unwrap();
        next = next_link(&r);
        let page = keys_of(r).await;
        assert!(page.len() <= 3);
        paged.extend(page);
        pages += 1;
        assert!(pages <= 3, "more pages than keys");
    }
    assert_eq!(pages, 3);
    assert_eq!(paged, all);

    // A page that ends exactly at the last key has no next link.
    let r = list(&app.client, &app, &format!("?limit=4&after={}", all[2].0)).await;
    assert!(next_link(&r).is_none());
    assert_eq!(keys_of(r).await, all[3..]);
    // `after` alone: every key after it.
    assert_eq!(keys_of(list(&app.client, &app, &format!("?after={}", all[4].0)).await).await, all[5..]);
    // After the last key: an empty page.
    assert_eq!(keys_of(list(&app.client, &app, &format!("?limit=10&after={}", all[6].0)).await).await, vec![]);
}

async fn bad_page_parameters_are_refused_clearly(builder: Builder) {
    let app = builder.spawn().await;
    app.admin_login().await;
    let (api_key, _) = app.generate_key().await;
    let key_ref = app.ref_of(&api_key).await;
    for query in ["?limit=0", "?limit=1001", "?limit=abc", "?limit=-1", "?limit=", "?after=nope", "?after=", "?limit=1&limit=2"] {
        let body = assert_problem(list(&app.client, &app, query).await, StatusCode::BAD_REQUEST).await;
        assert!(!body["detail"].as_str().unwrap().is_empty(), "{query}");
    }
    // A cursor that names no key of this account: another account's key, a deleted key.
    let other = app.new_admin("other@example.com", "other").await;
    let (other_key, _) = app.generate_key_with(&other).await;
    let other_ref = app.list_keys_with(&other).await.into_iter().find(|(_, k)| *k == other_key).unwrap().0;
    assert_problem(list(&app.client, &app, &format!("?after={other_ref}")).await, StatusCode::BAD_REQUEST).await;
    let r = app.client.delete(app.url(&format!("/auth/user/{key_ref}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let body =
        assert_problem(list(&app.client, &app, &format!("?limit=5&after={key_ref}")).await, StatusCode::BAD_REQUEST).await;
    assert!(body["detail"].as_str().unwrap().contains("after"));
    // Pages never cross accounts, and need a session like the whole list.
    assert_eq!(keys_of(list(&other, &app, "?limit=1000").await).await, vec![(other_ref, other_key)]);
    assert_problem(list(&Client::new(), &app, "?limit=5").await, StatusCode::UNAUTHORIZED).await;
}

async fn the_openapi_document_describes_paging(builder: Builder) {
    let app = builder.spawn().await;
    let doc: Value = Client::new().get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    let op = &doc["paths"]["/auth/keys/list"]["get"];
    let params = op["parameters"].as_array().unwrap();
    let param = |name: &str| params.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("{name}: {op}"));
    assert_eq!(param("limit")["in"], "query");
    assert_eq!(param("limit")["schema"]["maximum"], 1000);
    assert_eq!(param("after")["in"], "query");
    assert!(op["responses"]["200"]["headers"]["Link"].is_object(), "{op}");
    assert!(op["responses"]["400"].is_object(), "{op}");
}
}
