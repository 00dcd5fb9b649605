//! RedisBackplane against real `redis-server` processes: instances that
//! talk to each other, bad bytes, a restarted server, a frozen server, and
//! subscriptions that end with their backplane.
//!
//! Needs `redis-server` and `redis-cli` on PATH (`apt-get install -y redis-server`).

use std::time::{Duration, Instant};

use cache_core::{
    Backplane, BackplaneEvent, BackplaneMessage, Error, Invalidation, Pattern, Subscription,
};
use cache_redis::RedisBackplane;
use cache_test_support::redis::RedisServer;

/// How long a test waits for an event that should come at once.
const WAIT: Duration = Duration::from_secs(5);

async fn backplane(url: &str, channel: &str) -> RedisBackplane {
    RedisBackplane::builder(url)
        .channel(channel)
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("build a backplane against a running server")
}

fn message(origin: u64, invalidation: Invalidation) -> BackplaneMessage {
    BackplaneMessage {
        origin,
        invalidations: vec![invalidation],
    }
}

fn every_kind() -> Vec<Invalidation> {
    vec![
        Invalidation::Key("reviews:offer:42:page:0:limit:10".into()),
        Invalidation::Key("ключ with spaces, \u{0} and é".into()),
        Invalidation::Pattern(Pattern::new("reviews:offer:42:*")),
        Invalidation::All,
    ]
}

/// The next event, which must come within [`WAIT`].
async fn next(subscription: &mut Box<dyn Subscription>) -> BackplaneEvent {
    tokio::time::timeout(WAIT, subscription.next())
        .await
        .expect("an event within the wait")
        .expect("the backplane is still alive")
}

/// The number of subscribers of `channel`, as the server counts them.
fn subscribers(server: &RedisServer, channel: &str) -> u64 {
    let reply = server.cli(&["PUBSUB", "NUMSUB", channel]);
    let mut lines = reply.lines();
    assert_eq!(lines.next(), Some(channel), "{reply}");
    lines
        .next()
        .and_then(|n| n.trim().parse().ok())
        .expect(&reply)
}

#[tokio::test]
async fn two_instances_exchange_every_kind_both_ways() {
    let server = RedisServer::start();
    let a = backplane(&server.url(), "offers").await;
    let b = backplane(&server.url(), "offers").await;
    let mut from_a = a.subscribe().await.unwrap();
    let mut from_b = b.subscribe().await.unwrap();

    for invalidation in every_kind() {
        let sent = message(1, invalidation);
        a.publish(&sent).await.unwrap();
        assert_eq!(
            next(&mut from_b).await,
            BackplaneEvent::Message(sent.clone())
        );
        // The sender hears itself too; it tells by the origin.
        assert_eq!(next(&mut from_a).await, BackplaneEvent::Message(sent));
    }
    for invalidation in every_kind() {
        let sent = message(2, invalidation);
        b.publish(&sent).await.unwrap();
        assert_eq!(
            next(&mut from_a).await,
            BackplaneEvent::Message(sent.clone())
        );
        assert_eq!(next(&mut from_b).await, BackplaneEvent::Message(sent));
    }
}

#[tokio::test]
async fn a_subscriber_receives_its_own_messages_in_order() {
    let server = RedisServer::start();
    let solo = RedisBackplane::builder(server.url()).build().await.unwrap();
    assert_eq!(solo.channel(), "cache:invalidation");
    let mut subscription = solo.subscribe().await.unwrap();
    // Subscribing twice is two subscribers, each with every message.
    let mut second = solo.subscribe().await.unwrap();
    assert_eq!(subscribers(&server, "cache:invalidation"), 2);

    let sent: Vec<_> = (0..20)
        .map(|i| message(9, Invalidation::Key(format!("k{i}"))))
        .collect();
    for message in &sent {
        solo.publish(message).await.unwrap();
    }
    for expected in &sent {
        assert_eq!(
            next(&mut subscription).await,
            BackplaneEvent::Message(expected.clone())
        );
    }
    for expected in &sent {
        assert_eq!(
            next(&mut second).await,
            BackplaneEvent::Message(expected.clone())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_received_while_nobody_reads_arrives_whole_and_in_order() {
    // Messages already received are taken without waiting (no timer, no
    // watch armed per message): none may be lost, reordered or taken for a
    // quiet connection, with a health check shorter than the burst.
    let server = RedisServer::start();
    let publisher = backplane(&server.url(), "burst").await;
    let reader = RedisBackplane::builder(server.url())
        .channel("burst")
        .health_check_interval(Duration::from_millis(20))
        .build()
        .await
        .unwrap();
    let mut subscription = reader.subscribe().await.unwrap();
    let sent: Vec<_> = (0..5_000)
        .map(|i| message(3, Invalidation::Key(format!("offer:{i}"))))
        .collect();
    for chunk in sent.chunks(500) {
        for message in chunk {
            publisher.publish(message).await.unwrap();
        }
        // Between chunks, longer than the health check: quiet spells and
        // queued messages both.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    for expected in &sent {
        assert_eq!(
            next(&mut subscription).await,
            BackplaneEvent::Message(expected.clone())
        );
    }
    assert_eq!(reader.status().reconnects, 0, "no gap, no reconnection");
    // Still live afterwards, and still ended by dropping the backplane,
    // queued messages or not.
    let last = message(3, Invalidation::All);
    publisher.publish(&last).await.unwrap();
    publisher.publish(&last).await.unwrap();
    assert_eq!(next(&mut subscription).await, BackplaneEvent::Message(last));
    drop(reader);
    assert_eq!(
        tokio::time::timeout(WAIT, subscription.next())
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn different_channels_do_not_see_each_other() {
    let server = RedisServer::start();
    let left = backplane(&server.url(), "left").await;
    let right = backplane(&server.url(), "right").await;
    let mut on_left = left.subscribe().await.unwrap();
    let mut on_right = right.subscribe().await.unwrap();

    let for_left = message(1, Invalidation::Key("only-left".into()));
    let for_right = message(2, Invalidation::Key("only-right".into()));
    left.publish(&for_left).await.unwrap();
    // Published after the first one returned, so a subscriber of both
    // channels would get `for_left` first: the first event on each side
    // shows that nothing crossed over, without sleeping.
    right.publish(&for_right).await.unwrap();
    assert_eq!(
        next(&mut on_right).await,
        BackplaneEvent::Message(for_right)
    );
    assert_eq!(next(&mut on_left).await, BackplaneEvent::Message(for_left));

    // And a channel name is taken literally, not as a pattern.
    let star = backplane(&server.url(), "*").await;
    let mut on_star = star.subscribe().await.unwrap();
    let other = message(3, Invalidation::All);
    left.publish(&other).await.unwrap();
    let starred = message(4, Invalidation::All);
    star.publish(&starred).await.unwrap();
    assert_eq!(next(&mut on_star).await, BackplaneEvent::Message(starred));
}

#[tokio::test]
async fn undecodable_bytes_are_a_gap_and_the_next_message_still_arrives() {
    let server = RedisServer::start();
    let backplane = backplane(&server.url(), "offers").await;
    let mut subscription = backplane.subscribe().await.unwrap();

    for garbage in ["garbage", ""] {
        let receivers = server.cli(&["PUBLISH", "offers", garbage]);
        assert_eq!(receivers.trim(), "1", "the subscriber is there");
        assert_eq!(next(&mut subscription).await, BackplaneEvent::Gap);
    }
    // A message of a future version is not a message either.
    let mut future = message(1, Invalidation::Key("k".into())).encode();
    future[0] = 2;
    let raw = redis::Client::open(server.url()).unwrap();
    let mut raw = raw.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("PUBLISH")
        .arg("offers")
        .arg(future)
        .query_async::<i64>(&mut raw)
        .await
        .unwrap();
    assert_eq!(next(&mut subscription).await, BackplaneEvent::Gap);

    let good = message(5, Invalidation::Pattern(Pattern::new("user:7:*")));
    backplane.publish(&good).await.unwrap();
    assert_eq!(next(&mut subscription).await, BackplaneEvent::Message(good));
}

#[tokio::test]
async fn a_restart_is_one_gap_then_messages_flow_again() {
    let mut server = RedisServer::start();
    let publisher = backplane(&server.url(), "offers").await;
    let listener = backplane(&server.url(), "offers").await;
    let mut subscription = listener.subscribe().await.unwrap();
    let before = message(1, Invalidation::Key("before".into()));
    publisher.publish(&before).await.unwrap();
    assert_eq!(
        next(&mut subscription).await,
        BackplaneEvent::Message(before)
    );

    server.restart();
    // The gap comes once the subscription is back (so the receiver clears
    // its L1 only when it can hear invalidations again).
    assert_eq!(next(&mut subscription).await, BackplaneEvent::Gap);
    assert_eq!(subscribers(&server, "offers"), 1);

    // The publisher's connection died with the server: the first publish
    // after the restart reconnects by itself.
    let after = message(1, Invalidation::Key("after".into()));
    publisher.publish(&after).await.unwrap();
    // Exactly one gap: the next event is the message.
    assert_eq!(
        next(&mut subscription).await,
        BackplaneEvent::Message(after)
    );
}

#[tokio::test]
async fn a_subscription_waits_out_a_stopped_server_and_reports_one_gap() {
    let mut server = RedisServer::start();
    let url = server.url();
    let listener = backplane(&url, "offers").await;
    let mut subscription = listener.subscribe().await.unwrap();

    server.kill();
    // Nothing listens now; the subscription keeps trying, with a growing
    // pause, and yields nothing meanwhile.
    let waiting = tokio::time::timeout(Duration::from_millis(700), subscription.next()).await;
    assert!(waiting.is_err(), "an event with no server: {waiting:?}");

    server.restart();
    assert_eq!(next(&mut subscription).await, BackplaneEvent::Gap);
    let publisher = backplane(&url, "offers").await;
    let sent = message(2, Invalidation::All);
    publisher.publish(&sent).await.unwrap();
    assert_eq!(next(&mut subscription).await, BackplaneEvent::Message(sent));
}

#[tokio::test]
async fn publishing_to_a_frozen_server_fails_within_the_timeout() {
    let mut server = RedisServer::start();
    let timeout = Duration::from_millis(300);
    let publisher = RedisBackplane::builder(server.url())
        .channel("offers")
        .timeout(timeout)
        .build()
        .await
        .unwrap();
    let listener = backplane(&server.url(), "offers").await;
    let mut subscription = listener.subscribe().await.unwrap();

    server.pause();
    // The first publish meets the open connection that no longer answers;
    // the second one opens a new connection, which hangs as well.
    for _ in 0..2 {
        let started = Instant::now();
        let err = publisher
            .publish(&message(1, Invalidation::Key("lost".into())))
            .await
            .expect_err("a frozen server cannot take a publish");
        let took = started.elapsed();
        assert!(err.is_timeout(), "{err:?}");
        assert_eq!(err.layer(), Some("redis-backplane"));
        assert!(took >= timeout, "{took:?}");
        assert!(took < timeout + Duration::from_millis(700), "{took:?}");
    }
    server.resume();

    let sent = message(1, Invalidation::Key("after".into()));
    publisher.publish(&sent).await.unwrap();
    // The publishes that timed out may or may not have reached the server
    // (they sat in its socket buffer): skip them, then find the new one.
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "the message after resume never came"
        );
        match next(&mut subscription).await {
            BackplaneEvent::Message(got) if got == sent => break,
            BackplaneEvent::Message(got) => {
                assert_eq!(got.invalidations, [Invalidation::Key("lost".into())])
            }
            // The health check (5 s by default) may have fired.
            BackplaneEvent::Gap => {}
        }
    }
}

#[tokio::test]
async fn the_health_check_notices_a_connection_that_stopped_answering() {
    let mut server = RedisServer::start();
    let listener = RedisBackplane::builder(server.url())
        .channel("offers")
        .timeout(Duration::from_millis(200))
        .health_check_interval(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let mut subscription = listener.subscribe().await.unwrap();

    // A healthy server answers the check: quiet is not a gap.
    let quiet = tokio::time::timeout(Duration::from_millis(600), subscription.next()).await;
    assert!(quiet.is_err(), "an event from a quiet channel: {quiet:?}");
    let sent = message(3, Invalidation::Key("before".into()));
    listener.publish(&sent).await.unwrap();
    assert_eq!(next(&mut subscription).await, BackplaneEvent::Message(sent));

    server.pause();
    // The connection stays open, but nothing answers: after 100 ms of
    // silence a PING goes unanswered for 200 ms and the subscription gives
    // the connection up. Without the check it would wait forever, deaf.
    let waiting = tokio::spawn(async move {
        let event = subscription.next().await;
        (subscription, event)
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.resume();
    let (mut subscription, event) = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("an event within the wait")
        .unwrap();
    assert_eq!(event, Some(BackplaneEvent::Gap));

    let sent = message(3, Invalidation::Key("k".into()));
    listener.publish(&sent).await.unwrap();
    assert_eq!(next(&mut subscription).await, BackplaneEvent::Message(sent));
}

#[tokio::test]
async fn dropping_every_clone_ends_the_subscriptions() {
    let server = RedisServer::start();
    let backplane = backplane(&server.url(), "offers").await;
    let clone = backplane.clone();
    let mut idle = backplane.subscribe().await.unwrap();
    let mut waiting = clone.subscribe().await.unwrap();
    assert_eq!(subscribers(&server, "offers"), 2);

    let waiter = tokio::spawn(async move { waiting.next().await });
    drop(backplane);
    // One clone left: still alive.
    let sent = message(1, Invalidation::All);
    clone.publish(&sent).await.unwrap();
    assert_eq!(next(&mut idle).await, BackplaneEvent::Message(sent.clone()));
    assert_eq!(
        tokio::time::timeout(WAIT, waiter).await.unwrap().unwrap(),
        Some(BackplaneEvent::Message(sent))
    );

    let mut waiting = clone.subscribe().await.unwrap();
    let waiter = tokio::spawn(async move {
        let event = waiting.next().await;
        (waiting, event)
    });
    tokio::task::yield_now().await;
    drop(clone);
    // A subscription waiting in `next()` wakes up with `None`...
    let (mut waiting, event) = tokio::time::timeout(WAIT, waiter)
        .await
        .expect("next() returns once the backplane is gone")
        .unwrap();
    assert_eq!(event, None);
    assert_eq!(waiting.next().await, None, "and keeps returning None");
    // ... and so does one called afterwards, even with a message pending.
    server.cli(&["PUBLISH", "offers", "pending"]);
    assert_eq!(tokio::time::timeout(WAIT, idle.next()).await.unwrap(), None);
    // Their connections are closed: nothing of the backplane is left on
    // the server, though the subscriptions themselves still exist.
    let deadline = Instant::now() + WAIT;
    while subscribers(&server, "offers") != 0 {
        assert!(
            Instant::now() < deadline,
            "subscriptions left on the server"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop((idle, waiting));
}

#[tokio::test]
async fn passwords_in_the_url_are_used_and_not_shown() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let url = format!("redis://:s3cret@127.0.0.1:{}", server.port());
    let backplane = backplane(&url, "offers").await;
    assert!(!format!("{backplane:?}").contains("s3cret"));
    let mut subscription = backplane.subscribe().await.unwrap();
    let sent = message(1, Invalidation::Key("k".into()));
    backplane.publish(&sent).await.unwrap();
    assert_eq!(next(&mut subscription).await, BackplaneEvent::Message(sent));

    for wrong in [
        server.url(),
        format!("redis://:wrong@127.0.0.1:{}", server.port()),
    ] {
        match RedisBackplane::builder(wrong).build().await {
            Err(err @ Error::Backend { .. }) => {
                assert!(!err.to_string().contains("s3cret"), "{err}")
            }
            other => panic!("expected an authentication failure, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn bad_configuration_fails_in_build() {
    // Nothing listens on port 1: refused at once.
    match RedisBackplane::builder("redis://127.0.0.1:1").build().await {
        Err(Error::Backend { .. }) => {}
        other => panic!("expected a connection failure, got {other:?}"),
    }
    let server = RedisServer::start();
    let cases = [
        RedisBackplane::builder("not a url"),
        RedisBackplane::builder(server.url()).channel(""),
        RedisBackplane::builder(server.url()).timeout(Duration::ZERO),
        RedisBackplane::builder(server.url()).health_check_interval(Duration::ZERO),
    ];
    for builder in cases {
        let debug = format!("{builder:?}");
        match builder.build().await {
            Err(Error::Config(_)) => {}
            other => panic!("expected a config error for {debug}, got {other:?}"),
        }
    }
    let off = RedisBackplane::builder(server.url())
        .health_check_interval(None)
        .name("bp")
        .build()
        .await
        .unwrap();
    assert!(format!("{off:?}").contains("\"bp\""));
}
