//! The Prometheus endpoint of the `metrics` example, scraped over HTTP: the
//! cache's series are there with their labels and current values.

use std::time::Duration;

use cache_memory::MemoryLayer;
use cache_tiered::{Tier, TieredCache};
use examples::metrics::{get, install_recorder, serve};

/// The value of the series `name{labels}` on the page, if present.
fn value(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn a_scrape_finds_the_cache_series() {
    let handle = install_recorder();
    let cache = TieredCache::builder()
        .name("scrape-test")
        .tier(Tier::new(
            MemoryLayer::builder().name("l1").build().unwrap(),
        ))
        .tier(
            Tier::new(MemoryLayer::builder().name("l2").build().unwrap())
                .timeout(Duration::from_secs(1)),
        )
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let exported = cache.clone();
    let server = tokio::spawn(serve(listener, handle, move || exported.export_metrics()));

    for _ in 0..3 {
        let v: u32 = cache
            .get_or_compute("offer:7", Duration::from_secs(60), || async {
                Ok::<_, std::io::Error>(7)
            })
            .await
            .unwrap();
        assert_eq!(v, 7);
    }
    assert!(cache.get::<u32>("offer:8").await.unwrap().is_none());

    let (status, page) = get(addr, "/metrics").await.unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    let cache_label = r#"cache="scrape-test""#;
    // One load, two hits in L1, two misses overall (offer:7 cold, offer:8).
    assert_eq!(
        value(
            &page,
            &format!(r#"cache_lookups_total{{{cache_label},outcome="hit"}}"#)
        ),
        Some(2.0),
        "{page}"
    );
    assert_eq!(
        value(
            &page,
            &format!(r#"cache_lookups_total{{{cache_label},outcome="miss"}}"#)
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &page,
            &format!(r#"cache_reads_total{{{cache_label},tier="l1",outcome="hit"}}"#)
        ),
        Some(2.0)
    );
    assert_eq!(
        value(&page, &format!("cache_loads_total{{{cache_label}}}")),
        Some(1.0)
    );
    assert_eq!(
        value(
            &page,
            &format!(r#"cache_entries{{{cache_label},tier="l1"}}"#)
        ),
        Some(1.0)
    );
    // Histograms, as buckets: the loader, and the L2's timed calls.
    assert_eq!(
        value(
            &page,
            &format!("cache_load_duration_seconds_count{{{cache_label}}}")
        ),
        Some(1.0)
    );
    let l2_reads = format!(
        r#"cache_tier_call_duration_seconds_count{{{cache_label},tier="l2",operation="read"}}"#
    );
    assert_eq!(value(&page, &l2_reads), Some(2.0), "{page}");
    assert!(
        page.contains("cache_tier_call_duration_seconds_bucket{"),
        "{page}"
    );

    let (status, _) = get(addr, "/elsewhere").await.unwrap();
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    server.abort();
}
