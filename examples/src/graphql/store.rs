//! The slow back end the service caches: offers and their reviews in
//! memory, behind a configurable latency per query and, optionally, a
//! bounded pool of connections (as a database client has), counting its
//! queries (so that a test can tell a cached answer from a loaded one).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// What the store answers for an offer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfferRow {
    /// The offer's id.
    pub id: String,
    /// What is on offer.
    pub title: String,
}

/// One review of an offer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewRow {
    /// `{offer id}:{number}`; also the review's cursor.
    pub id: String,
    /// The offer reviewed.
    pub offer_id: String,
    /// Who wrote it.
    pub author_id: String,
    /// 1 to 5.
    pub stars: u8,
    /// What they wrote.
    pub text: String,
}

/// One page of an offer's reviews, newest first: the `first` reviews after
/// the one whose id is `after` (from the newest when `after` is empty).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PageRequest {
    /// The offer.
    pub offer_id: String,
    /// The cursor: a review id, or empty for the first page. A cursor that
    /// names no review of the offer gives an empty page.
    pub after: String,
    /// The page size.
    pub first: usize,
}

/// A review to add.
#[derive(Debug, Clone, PartialEq)]
pub struct NewReview {
    /// The offer reviewed.
    pub offer_id: String,
    /// Who writes it.
    pub author_id: String,
    /// 1 to 5.
    pub stars: u8,
    /// What they write.
    pub text: String,
}

/// Why the store refused a write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// There is no offer with this id: check it (`offer(id:)` answers `null`).
    #[error("there is no offer with id {0:?}")]
    UnknownOffer(String),
    /// A review has 1 to 5 stars.
    #[error("a review has 1 to 5 stars, not {0}")]
    InvalidStars(i64),
    /// A review needs its author's id.
    #[error("a review needs an author id")]
    MissingAuthor,
}

/// The in-process store, as slow as a remote database.
#[derive(Debug)]
pub struct Store {
    latency: Duration,
    /// The connections: at most this many queries at once, the rest
    /// waiting their turn, as with a database's pool; `None`: no limit.
    pool: Option<(usize, Semaphore)>,
    queries: AtomicU64,
    data: Mutex<Data>,
}

#[derive(Debug, Default)]
struct Data {
    offers: BTreeMap<String, OfferRow>,
    /// By offer, newest first.
    reviews: HashMap<String, Vec<ReviewRow>>,
    /// The number of the last review written, per offer.
    last_review: HashMap<String, u64>,
}

/// The default latency of each query.
pub const DEFAULT_LATENCY: Duration = Duration::from_millis(5);

impl Store {
    /// An empty store whose every query takes `latency`.
    pub fn new(latency: Duration) -> Self {
        Store {
            latency,
            pool: None,
            queries: AtomicU64::new(0),
            data: Mutex::default(),
        }
    }

    /// A store with three offers: `1` (a lamp, twelve reviews), `2` (a
    /// desk, three reviews) and `3` (a chair, none yet).
    pub fn seeded(latency: Duration) -> Self {
        let store = Store::new(latency);
        {
            let mut data = store.lock();
            for (id, title, reviews) in [
                ("1", "Desk lamp", 12u64),
                ("2", "Oak desk", 3),
                ("3", "Chair", 0),
            ] {
                data.offers.insert(
                    id.to_owned(),
                    OfferRow {
                        id: id.to_owned(),
                        title: title.to_owned(),
                    },
                );
                for n in 1..=reviews {
                    let review = NewReview {
                        offer_id: id.to_owned(),
                        author_id: format!("user{}", n % 4 + 1),
                        stars: (n % 5 + 1) as u8,
                        text: format!("review {n} of the {}", title.to_lowercase()),
                    };
                    data.insert(review);
                }
                data.last_review.entry(id.to_owned()).or_insert(0);
            }
        }
        store
    }

    /// Lets at most `connections` queries run at once (at least one), the
    /// others waiting for a free connection, as a database client's pool
    /// does (sqlx's default pool, for one, holds 10). Without this call
    /// the store answers any number of queries at once, which no database
    /// does: a benchmark of the cache against such a store flatters the
    /// store.
    ///
    /// ```
    /// use std::time::Duration;
    /// use examples::graphql::store::Store;
    ///
    /// let store = Store::seeded(Duration::from_millis(5)).with_connections(10);
    /// assert_eq!(store.connections(), Some(10));
    /// ```
    #[must_use]
    pub fn with_connections(mut self, connections: usize) -> Self {
        let connections = connections.max(1);
        self.pool = Some((connections, Semaphore::new(connections)));
        self
    }

    /// The size of the store's pool of connections; `None`: no limit.
    pub fn connections(&self) -> Option<usize> {
        self.pool.as_ref().map(|(size, _)| *size)
    }

    /// How many queries (reads and writes) the store has answered.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::SeqCst)
    }

    /// How long each query takes.
    pub fn latency(&self) -> Duration {
        self.latency
    }

    /// One round trip to the "database".
    async fn query(&self) {
        self.queries.fetch_add(1, Ordering::SeqCst);
        // Held for the query's whole latency, as a connection would be.
        // The semaphore is never closed, so acquiring cannot fail.
        let _connection = match &self.pool {
            Some((_, free)) => free.acquire().await.ok(),
            None => None,
        };
        tokio::time::sleep(self.latency).await;
    }

    fn lock(&self) -> MutexGuard<'_, Data> {
        // Nothing panics while holding the lock; recover rather than cascade.
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The offer with this id, if there is one.
    pub async fn offer(&self, id: &str) -> Result<Option<OfferRow>, StoreError> {
        self.query().await;
        Ok(self.lock().offers.get(id).cloned())
    }

    /// The average of an offer's stars; `None` without reviews (or offer).
    pub async fn average_rating(&self, id: &str) -> Result<Option<f64>, StoreError> {
        self.query().await;
        let data = self.lock();
        let reviews = data.reviews.get(id).map(Vec::as_slice).unwrap_or_default();
        if reviews.is_empty() {
            return Ok(None);
        }
        let total: u64 = reviews.iter().map(|review| u64::from(review.stars)).sum();
        Ok(Some(total as f64 / reviews.len() as f64))
    }

    /// Several pages, of one offer or many, in one query (one
    /// `SELECT ... WHERE offer_id IN (...)`): one answer per request, in order.
    pub async fn review_pages(
        &self,
        pages: &[PageRequest],
    ) -> Result<Vec<(PageRequest, Vec<ReviewRow>)>, StoreError> {
        self.query().await;
        let data = self.lock();
        Ok(pages
            .iter()
            .map(|page| (page.clone(), data.page(page)))
            .collect())
    }

    /// Writes a review (as slowly as any query) and returns it.
    pub async fn add_review(&self, review: NewReview) -> Result<ReviewRow, StoreError> {
        if !(1..=5).contains(&review.stars) {
            return Err(StoreError::InvalidStars(review.stars.into()));
        }
        if review.author_id.is_empty() {
            return Err(StoreError::MissingAuthor);
        }
        self.query().await;
        let mut data = self.lock();
        if !data.offers.contains_key(&review.offer_id) {
            return Err(StoreError::UnknownOffer(review.offer_id));
        }
        Ok(data.insert(review))
    }
}

impl Data {
    fn insert(&mut self, review: NewReview) -> ReviewRow {
        let number = self.last_review.entry(review.offer_id.clone()).or_insert(0);
        *number += 1;
        let row = ReviewRow {
            id: format!("{}:{number}", review.offer_id),
            offer_id: review.offer_id,
            author_id: review.author_id,
            stars: review.stars,
            text: review.text,
        };
        self.reviews
            .entry(row.offer_id.clone())
            .or_default()
            .insert(0, row.clone());
        row
    }

    fn page(&self, page: &PageRequest) -> Vec<ReviewRow> {
        let reviews = self
            .reviews
            .get(&page.offer_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let start = if page.after.is_empty() {
            0
        } else {
            match reviews.iter().position(|review| review.id == page.after) {
                Some(at) => at + 1,
                None => return Vec::new(),
            }
        };
        reviews
            .iter()
            .skip(start)
            .take(page.first)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(offer_id: &str, after: &str, first: usize) -> PageRequest {
        PageRequest {
            offer_id: offer_id.to_owned(),
            after: after.to_owned(),
            first,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pages_go_newest_first_from_the_cursor() {
        let store = Store::seeded(DEFAULT_LATENCY);
        let pages = store
            .review_pages(&[page("1", "", 3), page("1", "1:10", 2), page("1", "*", 3)])
            .await
            .unwrap();
        let ids = |n: usize| -> Vec<&str> { pages[n].1.iter().map(|r| r.id.as_str()).collect() };
        assert_eq!(ids(0), ["1:12", "1:11", "1:10"]);
        assert_eq!(ids(1), ["1:9", "1:8"]);
        assert!(ids(2).is_empty(), "an unknown cursor: an empty page");
        assert_eq!(store.queries(), 1, "one query for every page");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pool_makes_queries_beyond_its_size_wait() {
        let store = std::sync::Arc::new(Store::seeded(DEFAULT_LATENCY).with_connections(2));
        let started = tokio::time::Instant::now();
        let queries: Vec<_> = (0..5)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.offer("1").await })
            })
            .collect();
        for query in queries {
            assert!(query.await.unwrap().unwrap().is_some());
        }
        // Two at a time: three rounds of the latency, not one.
        assert_eq!(started.elapsed(), DEFAULT_LATENCY * 3);
        assert_eq!(store.queries(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_review_changes_the_first_page_and_the_average() {
        let store = Store::seeded(DEFAULT_LATENCY);
        assert_eq!(store.average_rating("3").await.unwrap(), None);
        let review = store
            .add_review(NewReview {
                offer_id: "3".into(),
                author_id: "user9".into(),
                stars: 4,
                text: "sturdy".into(),
            })
            .await
            .unwrap();
        assert_eq!(review.id, "3:1");
        assert_eq!(store.average_rating("3").await.unwrap(), Some(4.0));
        let pages = store.review_pages(&[page("3", "", 10)]).await.unwrap();
        assert_eq!(pages[0].1, [review]);
        let refused = store
            .add_review(NewReview {
                offer_id: "404".into(),
                author_id: "user9".into(),
                stars: 4,
                text: String::new(),
            })
            .await;
        assert_eq!(refused, Err(StoreError::UnknownOffer("404".into())));
    }
}
