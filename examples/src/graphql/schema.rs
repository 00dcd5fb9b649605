//! The GraphQL schema: `offer(id)`, `Offer { id, title, reviews, averageRating }`
//! and the `addReview` mutation. Every resolver takes the cache from the
//! schema's context and caches its field for five minutes under the
//! original design's keys ([`keys`](super::keys)).

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::{DataLoader, Loader};
use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{
    Context, EmptySubscription, ID, Object, Result, Schema, ServerResult, SimpleObject, Variables,
};
use cache_invalidation::Invalidator;
use cache_tiered::TieredCache;

use super::keys::{self, TTL};
use super::store::{NewReview, OfferRow, PageRequest, ReviewRow, Store, StoreError};

/// The schema of the offers service.
pub type OffersSchema = Schema<Query, Mutation, EmptySubscription>;

/// What every resolver finds in the schema's context.
pub(crate) struct State {
    pub(crate) cache: TieredCache,
    pub(crate) invalidator: Invalidator,
    pub(crate) store: Arc<Store>,
    /// `false`: the resolvers go to the store every time (`Config::caching`).
    pub(crate) caching: bool,
}

/// Bounds on what one request may ask: the service is public, and every
/// `reviews` field may cost a query of the store.
const MAX_DEPTH: usize = 12;
const MAX_COMPLEXITY: usize = 2_000;
/// The largest page `reviews(first:)` serves.
const MAX_PAGE: i32 = 100;

/// Builds the schema over `state`.
pub(crate) fn build(state: State) -> OffersSchema {
    // No cache in the DataLoader itself: the tiered cache is the cache,
    // and only it hears of invalidations. The DataLoader gathers the pages
    // asked for in one request (within its 1 ms window) into one batch.
    let pages = DataLoader::new(
        ReviewPages {
            cache: state.caching.then(|| state.cache.clone()),
            store: state.store.clone(),
        },
        tokio::spawn,
    );
    Schema::build(Query, Mutation, EmptySubscription)
        .data(state)
        .data(pages)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .extension(ParsedQueries::new())
        .finish()
}

/// Keeps the parsed form of the queries the service is sent, by their
/// text: clients send the same few queries over and over, and parsing one
/// costs more CPU than answering it from the cache (a profile of the load
/// test put the GraphQL parser at about 14% of the CPU of a cached answer).
/// Validation still runs on every request.
struct ParsedQueries {
    parsed: Arc<quick_cache::sync::Cache<String, ExecutableDocument>>,
}

impl ParsedQueries {
    /// Distinct queries kept (the least used go first).
    const CAPACITY: usize = 1_000;
    /// Longer queries are parsed every time: a client could otherwise fill
    /// the memory with large one-off queries.
    const MAX_QUERY_BYTES: usize = 4 << 10;

    fn new() -> Self {
        ParsedQueries {
            parsed: Arc::new(quick_cache::sync::Cache::new(Self::CAPACITY)),
        }
    }
}

impl ExtensionFactory for ParsedQueries {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ParsedQueries {
            parsed: self.parsed.clone(),
        })
    }
}

#[async_trait::async_trait]
impl Extension for ParsedQueries {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        if let Some(document) = self.parsed.get(query) {
            return Ok(document);
        }
        let document = next.run(ctx, query, variables).await?;
        if query.len() <= Self::MAX_QUERY_BYTES {
            self.parsed.insert(query.to_owned(), document.clone());
        }
        Ok(document)
    }
}

/// The queries.
#[derive(Debug)]
pub struct Query;

#[Object]
impl Query {
    /// An offer by id; `null` if there is none.
    async fn offer(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Offer>> {
        let state = ctx.data::<State>()?;
        if !state.caching {
            return Ok(state.store.offer(&id).await?.map(Offer));
        }
        let store = state.store.clone();
        let owned = id.to_string();
        // An id with no offer is cached too (for the cache's negative TTL),
        // so that a client asking again and again costs one query.
        let row = state
            .cache
            .entry(&keys::offer(&id))
            .ttl(TTL)
            .get_or_compute_optional(move || async move { store.offer(&owned).await })
            .await?;
        Ok(row.map(Offer))
    }
}

/// An offer and what its reviewers think of it.
#[derive(Debug)]
pub struct Offer(OfferRow);

#[Object]
impl Offer {
    /// The offer's id.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }

    /// What is on offer.
    async fn title(&self) -> &str {
        &self.0.title
    }

    /// Reviews, newest first: the `first` (1 to 100) after the review
    /// whose `cursor` is `after`, from the newest without one. A cursor is
    /// opaque: one that names no review of this offer gives an empty list.
    async fn reviews(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 10, validator(minimum = 1, maximum = 100))] first: i32,
        after: Option<String>,
    ) -> Result<Vec<Review>> {
        // Checked by the validator; again here, so that no input can wrap.
        let first = usize::try_from(first.clamp(1, MAX_PAGE)).unwrap_or(1);
        let page = PageRequest {
            offer_id: self.0.id.clone(),
            after: after.unwrap_or_default(),
            first,
        };
        let pages = ctx.data::<DataLoader<ReviewPages>>()?;
        let rows = pages.load_one(page).await?.unwrap_or_default();
        Ok(rows.into_iter().map(Review::from).collect())
    }

    /// The average of the reviews' stars; `null` without reviews.
    async fn average_rating(&self, ctx: &Context<'_>) -> Result<Option<f64>> {
        let state = ctx.data::<State>()?;
        let id = &self.0.id;
        if !state.caching {
            return Ok(state.store.average_rating(id).await?);
        }
        let rating = state
            .cache
            .get_or_compute(&keys::rating(id), TTL, || state.store.average_rating(id))
            .await?;
        Ok(rating)
    }
}

/// One review.
#[derive(Debug, SimpleObject)]
pub struct Review {
    /// The review's id.
    id: ID,
    /// Pass as `reviews(after:)` for the reviews after this one.
    cursor: String,
    /// 1 to 5.
    stars: i32,
    /// Who wrote it.
    author_id: ID,
    /// What they wrote.
    text: String,
}

impl From<ReviewRow> for Review {
    fn from(row: ReviewRow) -> Self {
        Review {
            id: ID(row.id.clone()),
            cursor: row.id,
            stars: row.stars.into(),
            author_id: ID(row.author_id),
            text: row.text,
        }
    }
}

/// The mutations.
#[derive(Debug)]
pub struct Mutation;

#[Object]
impl Mutation {
    /// Writes a review of an offer, then drops what it changed from the
    /// cache, on every instance: the offer's pages of reviews and its
    /// average rating (the dependency rules of `reviews:offer:{id}`).
    async fn add_review(
        &self,
        ctx: &Context<'_>,
        offer_id: ID,
        stars: i32,
        author_id: ID,
        #[graphql(default)] text: String,
    ) -> Result<Review> {
        let state = ctx.data::<State>()?;
        let stars = u8::try_from(stars)
            .ok()
            .filter(|stars| (1..=5).contains(stars))
            .ok_or(StoreError::InvalidStars(stars.into()))?;
        let review = NewReview {
            offer_id: offer_id.to_string(),
            author_id: author_id.to_string(),
            stars,
            text,
        };
        let row = state.store.add_review(review).await?;
        // After the store, never before: a load between the two would
        // cache the old reviews again.
        let invalidated = state
            .invalidator
            .invalidate_key(&keys::reviews(&offer_id))
            .await
            .map_err(|error| {
                format!("the review was saved, but the cache may serve the old reviews: {error}")
            })?;
        if !invalidated.report.is_complete() && !invalidated.report.is_deferred() {
            tracing::warn!(
                offer = %offer_id.as_str(),
                report = ?invalidated.report,
                "a tier missed the invalidation of a new review; it may serve old reviews until they expire"
            );
        }
        Ok(row.into())
    }
}

/// Loads pages of reviews for a DataLoader: all the pages one request
/// asks for (of many offers) with one `get_or_compute_many`, so with one
/// read per cache tier and one store query for the pages no tier holds.
pub(crate) struct ReviewPages {
    /// `None` with caching off: one store query for all the pages.
    cache: Option<TieredCache>,
    store: Arc<Store>,
}

impl Loader<PageRequest> for ReviewPages {
    type Value = Vec<ReviewRow>;
    /// The cache's error or, with caching off, the store's, as the
    /// message GraphQL clients see.
    type Error = async_graphql::Error;

    async fn load(
        &self,
        pages: &[PageRequest],
    ) -> Result<HashMap<PageRequest, Vec<ReviewRow>>, Self::Error> {
        let Some(cache) = &self.cache else {
            return Ok(self.store.review_pages(pages).await?.into_iter().collect());
        };
        let key_of =
            |page: &PageRequest| keys::reviews_page(&page.offer_id, Some(&page.after), page.first);
        let keys: Vec<String> = pages.iter().map(key_of).collect();
        let requested: HashMap<&str, &PageRequest> =
            keys.iter().map(String::as_str).zip(pages).collect();
        let store = &self.store;
        let loader = |missing: Vec<String>| async move {
            let missing: Vec<PageRequest> = missing
                .iter()
                .filter_map(|key| requested.get(key.as_str()).map(|page| (*page).clone()))
                .collect();
            let found = store.review_pages(&missing).await?;
            Ok::<_, StoreError>(
                found
                    .into_iter()
                    .map(move |(page, rows)| (key_of(&page), rows)),
            )
        };
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let results = cache.get_or_compute_many(&key_refs, TTL, loader).await;
        let mut loaded = HashMap::with_capacity(pages.len());
        for (page, result) in pages.iter().zip(results) {
            // The store answers every page it is asked for; a page it did
            // not answer would read as empty.
            if let Some(rows) = result? {
                loaded.insert(page.clone(), rows);
            }
        }
        Ok(loaded)
    }
}
