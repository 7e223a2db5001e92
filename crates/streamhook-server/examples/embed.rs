//! Mounting streamhook's webhook router inside your own axum app.
//!
//! Your app keeps its routes; `/gcore/webhook` becomes a durable, source-checked inbox, and
//! a sink of your own (here: a function that logs) gets each event, at least once, in order
//! per resource, with retries.
//!
//! Run: `cargo run -p streamhook-server --example embed`, then
//! `curl -d @fixtures/seed/15-video-processed.json http://127.0.0.1:3000/gcore/webhook`.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use axum::routing::get;
use streamhook_core::{
    Delivery, Dispatcher, Journal, JournalConfig, RetryPolicy, Router, Sink, SinkError,
    SourceFilter,
};
use streamhook_server::config::Limits;
use streamhook_server::{Intake, app};

/// Your own sink: publish a video when it is ready, say.
#[derive(Debug)]
struct Publisher;

#[async_trait]
impl Sink for Publisher {
    fn name(&self) -> &str {
        "publisher"
    }

    async fn send(&self, delivery: &Delivery) -> Result<(), SinkError> {
        let kinds: Vec<&str> = delivery.envelope.kinds.iter().map(|k| k.as_str()).collect();
        tracing::info!(id = %delivery.envelope.id, resource = %delivery.envelope.resource, kinds = ?kinds, "publishing");
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();

    // The journal and the intake: loopback allowed here so curl can try it.
    let journal = Journal::open(JournalConfig::new("./streamhook-embed-data"))?;
    let filter = SourceFilter::new(vec!["127.0.0.0/8".parse()?], vec![]);
    let intake = Intake::new(journal.clone(), filter, Limits::default());

    // Deliver every event to the publisher.
    let sink: Arc<dyn Sink> = Arc::new(Publisher);
    journal.cursor(sink.name())?; // create the cursor before accepting events
    let router = Arc::new(RwLock::new(Arc::new(Router::new(
        &[],
        &[],
        &["publisher".to_owned()],
    )?)));
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(Dispatcher::new(journal, sink, router, RetryPolicy::default()).run(stop_rx));

    // Your app, with streamhook nested under /gcore.
    let your_app = axum::Router::new()
        .route("/", get(|| async { "your app" }))
        .nest("/gcore", app(intake, "/webhook"));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    tracing::info!("POST Gcore webhooks to http://127.0.0.1:3000/gcore/webhook");
    // The source filter needs each request's peer address: serve with connect info.
    axum::serve(
        listener,
        your_app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
