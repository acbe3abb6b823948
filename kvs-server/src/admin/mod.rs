//! The admin HTTP listener (`--admin-addr`): `/metrics` (Prometheus text), `/health`,
//! `/ready`, `/status` (JSON) and the status page at `/`.
//!
//! It never asks the event loop anything: the loop publishes a [`Status`] on a
//! `tokio::sync::watch` (on every change of role or leader, and at least every
//! [`PUBLISH_INTERVAL`]), the metrics are atomics ([`crate::metrics`]) and the notable
//! events a small ring ([`events`]). A request reads those and answers; a slow or stuck
//! HTTP client costs the consensus loop nothing.
//!
//! | module | what |
//! |---|---|
//! | [`status`] | the published status, and the health and readiness decisions |
//! | [`events`] | notable events: logged and kept for the page |
//! | [`view`] | the status as `/status` and the page show it |
//! | [`page`] | the HTML status page |

pub mod events;
pub mod page;
pub mod status;
pub mod view;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
pub use events::Notables;
pub use status::Status;

/// How often the event loop publishes its status at least.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(200);

/// What the admin listener reads: the published status, the metrics, the events.
pub struct Admin {
    /// The status the event loop publishes.
    pub status: watch::Receiver<Status>,
    /// The replica's metrics.
    pub metrics: Arc<Metrics>,
    /// The replica's notable events.
    pub events: Arc<Notables>,
}

impl Admin {
    /// The current view of the replica.
    fn view(&self) -> view::StatusView {
        let status = self.status.borrow().clone();
        view::StatusView::new(&status, Instant::now(), &self.metrics, &self.events)
    }
}

/// The routes of the admin listener.
pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/", get(page_handler))
        .route("/metrics", get(metrics_handler))
        .route("/health", get(health_handler))
        .route("/ready", get(ready_handler))
        .route("/status", get(status_handler))
        .with_state(admin)
}

/// Serves the admin listener on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, stop: CancellationToken) {
    let served = axum::serve(listener, router(admin))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "the admin listener stopped");
    }
}

async fn metrics_handler(State(admin): State<Arc<Admin>>) -> Response {
    match admin.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics",
        )
            .into_response(),
    }
}

/// A health or readiness answer: 200 with `{"health":true}`, or 503 with the reason.
fn verdict(name: &str, result: Result<(), String>) -> Response {
    let mut body = serde_json::Map::new();
    body.insert(name.into(), result.is_ok().into());
    let code = match result {
        Ok(()) => StatusCode::OK,
        Err(reason) => {
            body.insert("reason".into(), reason.into());
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    (code, Json(serde_json::Value::Object(body))).into_response()
}

async fn health_handler(State(admin): State<Arc<Admin>>) -> Response {
    let status = admin.status.borrow().clone();
    verdict("health", status::health(&status, Instant::now()))
}

async fn ready_handler(State(admin): State<Arc<Admin>>) -> Response {
    let status = admin.status.borrow().clone();
    verdict("ready", status::readiness(&status))
}

async fn status_handler(State(admin): State<Arc<Admin>>) -> Response {
    Json(admin.view()).into_response()
}

async fn page_handler(State(admin): State<Arc<Admin>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page::render(&admin.view()),
    )
        .into_response()
}
