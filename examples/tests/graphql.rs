//! The GraphQL example over real HTTP: each test starts the service on a
//! free loopback port (or two instances over one real `redis-server`) and
//! sends GraphQL requests to it, counting the store's queries to tell a
//! cached answer from a loaded one.
//!
//! No fixed ports and no timing assertions: what the backplane delivers
//! asynchronously is polled for, with a deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::Request;
use cache_test_support::redis::RedisServer;
use examples::graphql::store::{DEFAULT_LATENCY, Store};
use examples::graphql::{Config, Service, keys, serve};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// How long to wait for what another instance publishes (a Redis round
/// trip, normally; generous for a loaded machine).
const DEADLINE: Duration = Duration::from_secs(20);

/// One running instance of the service, and a client for it.
struct Instance {
    service: Service,
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Instance {
    /// Starts the service on a free port of 127.0.0.1.
    async fn start(config: &Config, store: Arc<Store>) -> Instance {
        let service = Service::start(config, store).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(serve(listener, service.clone(), std::future::pending()));
        let client = Client::builder(TokioExecutor::new()).build_http();
        Instance {
            service,
            client,
            base,
            server,
        }
    }

    /// An in-process L1 only.
    async fn l1_only(store: Arc<Store>) -> Instance {
        Instance::start(&Config::default(), store).await
    }

    /// L1 over the Redis of `server`, with the breaker and the backplane.
    async fn over_redis(server: &RedisServer, store: Arc<Store>) -> Instance {
        let config = Config {
            redis_url: Some(server.url()),
            // A busy machine is no failing Redis: no timeouts in the tests.
            redis_timeout: Duration::from_secs(10),
            ..Config::default()
        };
        Instance::start(&config, store).await
    }

    fn store(&self) -> &Store {
        self.service.store()
    }

    /// Sends `request` (a JSON body) to `path`; the status and the body.
    async fn send(&self, method: &str, path: &str, body: Bytes) -> (u16, Bytes) {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(body))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    }

    /// The whole GraphQL response to `query` with `variables`.
    async fn graphql(&self, query: &str, variables: Value) -> Value {
        let body = json!({ "query": query, "variables": variables }).to_string();
        let (status, body) = self.send("POST", "/graphql", body.into()).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// The `data` of a response that must have no errors.
    async fn data(&self, query: &str, variables: Value) -> Value {
        let response = self.graphql(query, variables).await;
        assert!(response.get("errors").is_none(), "{response:#}");
        response["data"].clone()
    }

    /// `data` of `query`, and how many store queries answering it took.
    async fn counted(&self, query: &str) -> (Value, u64) {
        let before = self.store().queries();
        let data = self.data(query, Value::Null).await;
        (data, self.store().queries() - before)
    }

    /// Adds a review through the API; returns the new review.
    async fn add_review(&self, offer: &str, stars: i64, text: &str) -> Value {
        let mutation = "mutation($offer: ID!, $stars: Int!, $text: String!) {
            addReview(offerId: $offer, stars: $stars, authorId: \"tester\", text: $text) {
                id cursor stars text
            }
        }";
        let variables = json!({ "offer": offer, "stars": stars, "text": text });
        self.data(mutation, variables).await["addReview"].clone()
    }

    /// Waits until this instance has applied `count` backplane messages.
    async fn received(&self, count: u64) {
        let deadline = Instant::now() + DEADLINE;
        while self.service.cache().stats().backplane.received < count {
            assert!(
                Instant::now() < deadline,
                "the backplane message never arrived"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Polls `query` until `done` holds for its data; returns that data.
    async fn poll(&self, query: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let data = self.data(query, Value::Null).await;
            if done(&data) {
                return data;
            }
            assert!(Instant::now() < deadline, "never saw it: {data:#}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn store() -> Arc<Store> {
    Arc::new(Store::seeded(DEFAULT_LATENCY))
}

/// Two offers with every field: ids, titles, ratings, a page of reviews each.
const TWO_OFFERS: &str = "{
    a: offer(id: \"1\") { id title averageRating reviews(first: 3) { id cursor stars authorId text } }
    b: offer(id: \"2\") { id title averageRating reviews { id stars } }
}";

/// Offer 3's reviews and rating (it has no review to start with).
const OFFER_3: &str = "{ offer(id: \"3\") { averageRating reviews { id stars text } } }";

/// Pages of offers 1 and 2 with ordinary and hostile cursors.
const PAGES: &str = "{
    one: offer(id: \"1\") {
        averageRating
        first: reviews(first: 2) { id }
        star: reviews(first: 2, after: \"*\") { id }
        next: reviews(first: 2, after: \"1:10\") { id }
        glob: reviews(first: 2, after: \"1:*\") { id }
    }
    two: offer(id: \"2\") { averageRating star: reviews(after: \"*\") { id } first: reviews { id } }
}";

fn ids(reviews: &Value) -> Vec<&str> {
    reviews
        .as_array()
        .unwrap()
        .iter()
        .map(|review| review["id"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_identical_query_is_served_from_the_cache() {
    let instance = Instance::l1_only(store()).await;
    let (first, loaded) = instance.counted(TWO_OFFERS).await;
    assert!(loaded > 0);
    assert_eq!(first["a"]["title"], "Desk lamp");
    assert_eq!(ids(&first["a"]["reviews"]), ["1:12", "1:11", "1:10"]);
    assert_eq!(first["b"]["averageRating"], 3.0);

    let (second, loaded) = instance.counted(TWO_OFFERS).await;
    assert_eq!(loaded, 0, "every field from the cache");
    assert_eq!(second, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_caching_off_every_query_goes_to_the_store() {
    // The load test's baseline: the same answers, none of them cached.
    let config = Config {
        caching: false,
        ..Config::default()
    };
    let instance = Instance::start(&config, store()).await;
    assert_eq!(instance.service.describe(), "nothing (caching off)");
    let cached = Instance::l1_only(store()).await;
    let (expected, _) = cached.counted(TWO_OFFERS).await;
    for _ in 0..2 {
        let (data, loaded) = instance.counted(TWO_OFFERS).await;
        assert_eq!(data, expected);
        // Two offers, two ratings, and their pages (one batch, or two if
        // the offers came back apart), every time.
        assert!((5..=6).contains(&loaded), "{loaded} queries: {data:#}");
    }
    assert_eq!(instance.service.cache().stats().loads, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reviews_of_many_offers_are_one_store_query() {
    let instance = Instance::l1_only(store()).await;
    // The offers themselves cached first: their `reviews` resolvers then
    // all run in the same poll, and the DataLoader sees them together.
    let offers =
        "{ a: offer(id: \"1\") { id } b: offer(id: \"2\") { id } c: offer(id: \"3\") { id } }";
    instance.counted(offers).await;
    let reviews = "{
        a: offer(id: \"1\") { reviews(first: 2) { id } }
        b: offer(id: \"2\") { reviews(first: 2) { id } }
        c: offer(id: \"3\") { reviews(first: 2) { id } }
    }";
    let loads = instance.service.cache().stats().loads;
    let (data, loaded) = instance.counted(reviews).await;
    assert_eq!(loaded, 1, "one batch for three pages: {data:#}");
    assert_eq!(instance.service.cache().stats().loads, loads + 3);
    assert_eq!(ids(&data["b"]["reviews"]), ["2:3", "2:2"]);
    assert!(ids(&data["c"]["reviews"]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_review_shows_in_the_next_query_with_the_new_average() {
    let instance = Instance::l1_only(store()).await;
    let (before, _) = instance.counted(OFFER_3).await;
    assert_eq!(before["offer"]["averageRating"], Value::Null);
    assert!(ids(&before["offer"]["reviews"]).is_empty());
    // Offer 1's fields, cached: a review of offer 3 must leave them be.
    instance.counted(TWO_OFFERS).await;

    let review = instance.add_review("3", 4, "sturdy").await;
    assert_eq!(review["id"], "3:1");
    let (after, _) = instance.counted(OFFER_3).await;
    assert_eq!(after["offer"]["averageRating"], 4.0);
    assert_eq!(after["offer"]["reviews"][0]["text"], "sturdy");

    instance.add_review("3", 2, "wobbly").await;
    let (after, _) = instance.counted(OFFER_3).await;
    assert_eq!(after["offer"]["averageRating"], 3.0);
    assert_eq!(ids(&after["offer"]["reviews"]), ["3:2", "3:1"]);

    let (_, loaded) = instance.counted(TWO_OFFERS).await;
    assert_eq!(loaded, 0, "offers 1 and 2 kept their cached fields");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_holding_a_star_invalidates_nothing_else() {
    let instance = Instance::l1_only(store()).await;
    let (pages, _) = instance.counted(PAGES).await;
    assert_eq!(ids(&pages["one"]["first"]), ["1:12", "1:11"]);
    assert_eq!(ids(&pages["one"]["next"]), ["1:9", "1:8"]);
    assert!(
        ids(&pages["one"]["star"]).is_empty(),
        "an opaque cursor naming no review"
    );
    let (again, loaded) = instance.counted(PAGES).await;
    assert_eq!(
        (&again, loaded),
        (&pages, 0),
        "the `*` pages are cached too"
    );

    // The `*` page's key holds no `*`: removing it (with whatever the
    // rules derive from it) removes that one page.
    let star_page = keys::reviews_page("1", Some("*"), 2);
    assert!(!star_page.contains('*'), "{star_page}");
    let invalidated = instance
        .service
        .invalidator()
        .invalidate_key(&star_page)
        .await
        .unwrap();
    assert!(invalidated.report.is_complete());
    let (again, loaded) = instance.counted(PAGES).await;
    assert_eq!(again, pages);
    assert_eq!(loaded, 1, "the `*` page of offer 1 alone was loaded again");

    // A review of offer 2 removes offer 2's pages (its `*` page too), and
    // no page of offer 1, however its cursor looks.
    instance.add_review("2", 5, "solid").await;
    let (after, loaded) = instance.counted(PAGES).await;
    assert_eq!(after["one"], pages["one"]);
    assert_eq!(ids(&after["two"]["first"]), ["2:4", "2:3", "2:2", "2:1"]);
    // Offer 2's rating and its two pages (one batch): two queries.
    assert_eq!(loaded, 2);

    // A hostile offer id is refused before it reaches the cache.
    let response = instance
        .graphql(
            "mutation { addReview(offerId: \"*\", stars: 3, authorId: \"x\") { id } }",
            Value::Null,
        )
        .await;
    let message = response["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("no offer with id \"*\""), "{message}");
    let (_, loaded) = instance.counted(PAGES).await;
    assert_eq!(loaded, 0, "nothing was invalidated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_errors_not_panics() {
    let instance = Instance::l1_only(store()).await;
    let error = |response: &Value| {
        response["errors"][0]["message"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    let response = instance.graphql("{ offer(id: ", Value::Null).await;
    assert!(response["data"].is_null(), "{response:#}");
    assert!(!error(&response).is_empty(), "a syntax error says where");

    let response = instance
        .graphql("{ offer(id: \"1\") { nope } }", Value::Null)
        .await;
    assert!(error(&response).contains("nope"), "{response:#}");

    for first in [0, -1, 1000, i64::from(i32::MAX)] {
        let query = format!("{{ offer(id: \"1\") {{ reviews(first: {first}) {{ id }} }} }}");
        let response = instance.graphql(&query, Value::Null).await;
        assert!(
            response.get("errors").is_some(),
            "first: {first}: {response:#}"
        );
    }
    let response = instance
        .graphql(
            "mutation { addReview(offerId: \"1\", stars: 9, authorId: \"x\") { id } }",
            Value::Null,
        )
        .await;
    assert!(error(&response).contains("1 to 5 stars"), "{response:#}");

    // Not GraphQL at all: a client error, not a server error.
    let (status, _) = instance
        .send("POST", "/graphql", Bytes::from_static(b"{not json"))
        .await;
    assert!((400..500).contains(&status), "{status}");

    // An unknown offer is null (and cached as such).
    let (data, _) = instance.counted("{ offer(id: \"404\") { id } }").await;
    assert_eq!(data["offer"], Value::Null);
    let (_, loaded) = instance.counted("{ offer(id: \"404\") { id } }").await;
    assert_eq!(loaded, 0);

    // The GraphiQL page.
    let (status, page) = instance.send("GET", "/", Bytes::new()).await;
    assert_eq!(status, 200);
    assert!(
        String::from_utf8_lossy(&page)
            .to_lowercase()
            .contains("graphiql")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_over_one_redis() {
    let server = RedisServer::start();
    let store = store(); // one database behind both instances
    let a = Instance::over_redis(&server, store.clone()).await;
    let b = Instance::over_redis(&server, store.clone()).await;

    // A second identical query, on the other instance: from Redis; then
    // from its own L1.
    let (first, loaded) = a.counted(TWO_OFFERS).await;
    assert!(loaded > 0);
    let (second, loaded) = b.counted(TWO_OFFERS).await;
    assert_eq!((&second, loaded), (&first, 0));
    let l2_hits = b.service.cache().stats().tiers[1].hits;
    assert!(l2_hits > 0, "B read Redis");
    let (_, loaded) = b.counted(TWO_OFFERS).await;
    assert_eq!(loaded, 0);
    assert_eq!(
        b.service.cache().stats().tiers[1].hits,
        l2_hits,
        "from B's L1"
    );

    // A review through A: B's next queries see it (once the backplane
    // message arrives), with the new average.
    let rating = first["a"]["averageRating"].as_f64().unwrap();
    let review = a.add_review("1", 5, "bright").await;
    let (after, _) = a.counted(TWO_OFFERS).await;
    assert_eq!(after["a"]["reviews"][0]["id"], review["id"]);
    let after = b
        .poll(TWO_OFFERS, |data| {
            data["a"]["reviews"][0]["id"] == review["id"]
        })
        .await;
    let new_rating = after["a"]["averageRating"].as_f64().unwrap();
    assert!(new_rating > rating, "{rating} -> {new_rating}");
    assert_eq!(after["b"], first["b"], "offer 2 unchanged");

    // A `*` cursor over Redis: both instances cache the pages; removing
    // the `*` page on A removes it everywhere, and nothing else.
    let (pages, _) = a.counted(PAGES).await;
    let (on_b, loaded) = b.counted(PAGES).await;
    assert_eq!((&on_b, loaded), (&pages, 0));
    let received = b.service.cache().stats().backplane.received;
    let star_page = keys::reviews_page("1", Some("*"), 2);
    a.service
        .invalidator()
        .invalidate_key(&star_page)
        .await
        .unwrap();
    b.received(received + 1).await;
    let (again, loaded) = a.counted(PAGES).await;
    assert_eq!(
        (&again, loaded),
        (&pages, 1),
        "A reloads the `*` page alone"
    );
    let (again, loaded) = b.counted(PAGES).await;
    assert_eq!((&again, loaded), (&pages, 0), "B finds A's reload in Redis");

    // A review of offer 2 through B reaches A's `*` page of offer 2 only.
    let received = a.service.cache().stats().backplane.received;
    b.add_review("2", 1, "scratched").await;
    a.received(received + 1).await;
    let (after, loaded) = a.counted(PAGES).await;
    assert_eq!(after["one"], pages["one"]);
    assert_eq!(ids(&after["two"]["first"])[0], "2:4");
    assert_eq!(loaded, 2, "offer 2's rating and pages, nothing of offer 1");
}
