//! HTTP instrumentation: [`SextantLayer`] for servers, [`ClientLayer`] and
//! [`ClientSpan`] for outgoing requests.
//!
//! The server layer works with axum (`Router::layer(SextantLayer::new())`,
//! which makes axum's `MatchedPath` visible, so spans are named after the
//! route template) and with any tower service over `http::Request`/`http::Response`.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskContext, Poll};

use http::{HeaderMap, HeaderValue, Method, Request, Response, Version};
use opentelemetry::context::FutureExt as _;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanBuilder, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use tower::{Layer, Service};

use crate::propagation::{CorrelationId, HeaderExtractor, HeaderInjector, CORRELATION_HEADER};

/// Starts a span from a builder under a parent and returns the parent with the span.
type StartSpan = dyn Fn(SpanBuilder, &Context) -> Context + Send + Sync;

/// The tracer and propagator used by the layers: the global ones unless given.
#[derive(Clone, Default)]
struct Telemetry {
    /// The given tracer, behind a closure so that its span type is kept (a `BoxedTracer` would
    /// box every span once more than `Context::with_span` does).
    tracer: Option<Arc<StartSpan>>,
    propagator: Option<Arc<dyn TextMapPropagator + Send + Sync>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("tracer", &self.tracer.as_ref().map(|_| "custom"))
            .field("propagator", &self.propagator)
            .finish()
    }
}

fn scope() -> InstrumentationScope {
    static SCOPE: OnceLock<InstrumentationScope> = OnceLock::new();
    SCOPE
        .get_or_init(|| {
            InstrumentationScope::builder("sextant-sdk")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build()
        })
        .clone()
}

fn span_starter<T>(tracer: T) -> Arc<StartSpan>
where
    T: Tracer + Send + Sync + 'static,
    T::Span: Send + Sync + 'static,
{
    Arc::new(move |builder: SpanBuilder, parent: &Context| {
        parent.with_span(builder.start_with_context(&tracer, parent))
    })
}

impl Telemetry {
    fn start(&self, builder: SpanBuilder, parent: &Context) -> Context {
        match &self.tracer {
            Some(start) => start(builder, parent),
            None => {
                let t = opentelemetry::global::tracer_with_scope(scope());
                parent.with_span(builder.start_with_context(&t, parent))
            }
        }
    }

    fn extract(&self, headers: &HeaderMap) -> Context {
        let ex = HeaderExtractor(headers);
        match &self.propagator {
            Some(p) => p.extract_with_context(&Context::new(), &ex),
            None => opentelemetry::global::get_text_map_propagator(|p| {
                p.extract_with_context(&Context::new(), &ex)
            }),
        }
    }

    fn inject(&self, cx: &Context, headers: &mut HeaderMap) {
        let mut inj = HeaderInjector(headers);
        match &self.propagator {
            Some(p) => p.inject_context(cx, &mut inj),
            None => {
                opentelemetry::global::get_text_map_propagator(|p| p.inject_context(cx, &mut inj))
            }
        }
        if let Some(id) = CorrelationId::of(cx) {
            if let Ok(v) = HeaderValue::from_str(id) {
                headers.insert(CORRELATION_HEADER, v);
            }
        }
    }
}

fn protocol_version(v: Version) -> Option<&'static str> {
    Some(match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => return None,
    })
}

fn host_and_port(host: &str) -> (&str, Option<i64>) {
    // [v6]:port, host:port, host
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once(']') {
            return (h, p.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty() => {
            (h, p.parse().ok())
        }
        _ => (host, None),
    }
}

fn matched_path<B>(req: &Request<B>) -> Option<String> {
    #[cfg(feature = "axum")]
    {
        if let Some(p) = req.extensions().get::<axum::extract::MatchedPath>() {
            return Some(p.as_str().to_string());
        }
    }
    req.extensions().get::<Route>().map(|r| r.0.clone())
}

/// A route template a non-axum router can put in the request extensions for
/// [`SextantLayer`] (axum's `MatchedPath` is read directly).
#[derive(Debug, Clone)]
pub struct Route(pub String);

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// Tower layer making one server span per request (see the module docs).
///
/// * name `METHOD /route` (route template from axum's `MatchedPath` or [`Route`], else the path);
/// * attributes `http.request.method`, `url.path`, `url.scheme`, `http.route`,
///   `http.response.status_code`, `server.address`, `server.port`,
///   `user_agent.original`, `network.protocol.version`, `correlation.id`;
/// * status error for 5xx responses and for service errors;
/// * parent extracted from the headers with the global propagator (or [`SextantLayer::with_propagator`]);
/// * `X-Correlation-ID` read from the request (else the request's trace id is its correlation
///   id), recorded as `correlation.id` and echoed in the response.
///
/// The span ends when the response head is ready (streaming bodies are not timed).
#[derive(Clone, Debug, Default)]
pub struct SextantLayer {
    telemetry: Telemetry,
}

impl SextantLayer {
    /// Use the global tracer provider and propagator (looked up per request).
    pub fn new() -> Self {
        Self::default()
    }

    /// Use this tracer instead of the global one.
    pub fn with_tracer<T>(mut self, tracer: T) -> Self
    where
        T: Tracer + Send + Sync + 'static,
        T::Span: Send + Sync + 'static,
    {
        self.telemetry.tracer = Some(span_starter(tracer));
        self
    }

    /// Use this propagator instead of the global one.
    pub fn with_propagator<P: TextMapPropagator + Send + Sync + 'static>(mut self, p: P) -> Self {
        self.telemetry.propagator = Some(Arc::new(p));
        self
    }
}

impl<S> Layer<S> for SextantLayer {
    type Service = SextantService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SextantService {
            inner,
            telemetry: self.telemetry.clone(),
        }
    }
}

/// The service made by [`SextantLayer`].
#[derive(Clone, Debug)]
pub struct SextantService<S> {
    inner: S,
    telemetry: Telemetry,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, ReqB, ResB> Service<Request<ReqB>> for SextantService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Future: Send + 'static,
    S::Error: Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let parent = self.telemetry.extract(req.headers());
        let given = req
            .headers()
            .get(CORRELATION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map(CorrelationId::from);

        let method = method_value(req.method());
        let path = req.uri().path();
        let route = matched_path(&req);
        let name = span_name(method.as_str(), route.as_deref().unwrap_or(path));

        let mut attrs = Vec::with_capacity(12);
        attrs.push(KeyValue::new("http.request.method", method));
        attrs.push(KeyValue::new("url.path", path.to_string()));
        if let Some(route) = route {
            attrs.push(KeyValue::new("http.route", route));
        }
        if let Some(scheme) = req.uri().scheme_str() {
            attrs.push(KeyValue::new("url.scheme", scheme.to_string()));
        }
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(std::borrow::Cow::Borrowed)
            .or_else(|| {
                req.uri()
                    .authority()
                    .map(|a| std::borrow::Cow::Owned(a.to_string()))
            });
        if let Some(host) = host {
            let (address, port) = host_and_port(&host);
            attrs.push(KeyValue::new("server.address", address.to_string()));
            if let Some(port) = port {
                attrs.push(KeyValue::new("server.port", port));
            }
        }
        if let Some(ua) = req
            .headers()
            .get(http::header::USER_AGENT)
            .and_then(|h| h.to_str().ok())
        {
            attrs.push(KeyValue::new("user_agent.original", ua.to_string()));
        }
        if let Some(v) = protocol_version(req.version()) {
            attrs.push(KeyValue::new("network.protocol.version", v));
        }
        if let Some(q) = req.uri().query() {
            attrs.push(KeyValue::new("url.query", q.to_string()));
        }

        // A request without a correlation id gets its trace id as one (no id of its own to
        // generate, and one that leads straight to the trace).
        let builder = SpanBuilder::from_name(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attrs);
        let cx = self.telemetry.start(builder, &parent);
        let correlation = given.unwrap_or_else(|| CorrelationId::of_trace(&cx));
        cx.span()
            .set_attribute(KeyValue::new("correlation.id", correlation.as_value()));
        let cx = cx.with_value(correlation.clone());

        let fut = {
            let _guard = cx.clone().attach();
            self.inner.call(req)
        };
        Box::pin(
            async move {
                let result = fut.await;
                let cx = Context::current();
                let span = cx.span();
                match &result {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        span.set_attribute(KeyValue::new(
                            "http.response.status_code",
                            status as i64,
                        ));
                        if status >= 500 {
                            span.set_attribute(KeyValue::new("error.type", status.to_string()));
                            span.set_status(Status::error(format!("HTTP {status}")));
                        }
                    }
                    Err(e) => {
                        span.set_attribute(KeyValue::new("error.type", "service_error"));
                        span.set_status(Status::error(e.to_string()));
                    }
                }
                span.end();
                result.map(|mut resp| {
                    if let Ok(v) = HeaderValue::from_str(correlation.as_str()) {
                        resp.headers_mut().insert(CORRELATION_HEADER, v);
                    }
                    resp
                })
            }
            .with_context(cx),
        )
    }
}

/// The method as an attribute value: the standard ones without an allocation.
fn method_value(m: &Method) -> opentelemetry::StringValue {
    let s: &'static str = match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return m.as_str().to_string().into(),
    };
    s.into()
}

/// `METHOD /route`, in one allocation of the exact size.
fn span_name(method: &str, route: &str) -> String {
    let mut name = String::with_capacity(method.len() + 1 + route.len());
    name.push_str(method);
    name.push(' ');
    name.push_str(route);
    name
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// A client span for one outgoing request, for clients that are not tower
/// services (reqwest, hyper...). Inject [`ClientSpan::headers`] into the
/// request, then [`ClientSpan::end`] with the status. Dropping it ends it too.
///
/// ```no_run
/// # async fn f(client: reqwest::Client) -> Result<(), reqwest::Error> {
/// let span = sextant_sdk::http::ClientSpan::start(&http::Method::GET, "http://backend/api/items");
/// let resp = client.get("http://backend/api/items").headers(span.headers()).send().await?;
/// span.end(resp.status().as_u16());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ClientSpan {
    cx: Context,
    telemetry: Telemetry,
    ended: bool,
}

fn client_attrs(method: &Method, url: &str) -> Vec<KeyValue> {
    let mut attrs = vec![
        KeyValue::new("http.request.method", method_value(method)),
        KeyValue::new("url.full", url.to_string()),
    ];
    if let Ok(uri) = url.parse::<http::Uri>() {
        if let Some(host) = uri.host() {
            attrs.push(KeyValue::new("server.address", host.to_string()));
        }
        let port = uri.port_u16().or(match uri.scheme_str() {
            Some("https") => Some(443),
            Some("http") => Some(80),
            _ => None,
        });
        if let Some(port) = port {
            attrs.push(KeyValue::new("server.port", port as i64));
        }
    }
    attrs
}

impl ClientSpan {
    /// Start a client span under the current context (tracing spans included
    /// when the tracing bridge is installed).
    pub fn start(method: &Method, url: &str) -> Self {
        Self::start_with_parent(&Context::current(), method, url)
    }

    /// Start a client span under `parent`.
    pub fn start_with_parent(parent: &Context, method: &Method, url: &str) -> Self {
        Self::start_inner(Telemetry::default(), parent, method, url)
    }

    fn start_inner(telemetry: Telemetry, parent: &Context, method: &Method, url: &str) -> Self {
        let builder = SpanBuilder::from_name(method.as_str().to_string())
            .with_kind(SpanKind::Client)
            .with_attributes(client_attrs(method, url));
        let cx = telemetry.start(builder, parent);
        ClientSpan {
            cx,
            telemetry,
            ended: false,
        }
    }

    /// The context of the client span (its parent's correlation id included).
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// Inject the span's context (and the correlation id) into `headers`.
    pub fn inject(&self, headers: &mut HeaderMap) {
        self.telemetry.inject(&self.cx, headers);
    }

    /// The headers to add to the request.
    pub fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        self.inject(&mut h);
        h
    }

    /// End with the response status (5xx and 4xx are errors on the client side).
    pub fn end(mut self, status: u16) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("http.response.status_code", status as i64));
        if status >= 400 {
            span.set_attribute(KeyValue::new("error.type", status.to_string()));
            span.set_status(Status::error(format!("HTTP {status}")));
        }
        span.end();
        self.ended = true;
    }

    /// End with a transport error.
    pub fn end_with_error(mut self, error: &dyn Display) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("error.type", "transport_error"));
        span.set_status(Status::error(error.to_string()));
        span.end();
        self.ended = true;
    }
}

impl Drop for ClientSpan {
    fn drop(&mut self) {
        if !self.ended {
            self.cx.span().end();
        }
    }
}

/// Tower layer for outgoing requests: one client span per request, context
/// injected into the request headers.
#[derive(Clone, Debug, Default)]
pub struct ClientLayer {
    telemetry: Telemetry,
}

impl ClientLayer {
    /// Use the global tracer provider and propagator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Use this tracer instead of the global one.
    pub fn with_tracer<T>(mut self, tracer: T) -> Self
    where
        T: Tracer + Send + Sync + 'static,
        T::Span: Send + Sync + 'static,
    {
        self.telemetry.tracer = Some(span_starter(tracer));
        self
    }

    /// Use this propagator instead of the global one.
    pub fn with_propagator<P: TextMapPropagator + Send + Sync + 'static>(mut self, p: P) -> Self {
        self.telemetry.propagator = Some(Arc::new(p));
        self
    }

    /// Start a [`ClientSpan`] with this layer's tracer and propagator.
    pub fn start_span(&self, parent: &Context, method: &Method, url: &str) -> ClientSpan {
        ClientSpan::start_inner(self.telemetry.clone(), parent, method, url)
    }
}

impl<S> Layer<S> for ClientLayer {
    type Service = ClientService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ClientService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`ClientLayer`].
#[derive(Clone, Debug)]
pub struct ClientService<S> {
    inner: S,
    layer: ClientLayer,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ClientService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Future: Send + 'static,
    S::Error: Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let url = req.uri().to_string();
        let span = self
            .layer
            .start_span(&Context::current(), req.method(), &url);
        span.inject(req.headers_mut());
        let cx = span.context().clone();
        let fut = {
            let _guard = cx.clone().attach();
            self.inner.call(req)
        };
        Box::pin(
            async move {
                let result = fut.await;
                match &result {
                    Ok(resp) => span.end(resp.status().as_u16()),
                    Err(e) => span.end_with_error(e),
                }
                result
            }
            .with_context(cx),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use opentelemetry::trace::{SpanId, TracerProvider as _};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
    use tower::ServiceExt;

    fn provider() -> (SdkTracerProvider, InMemorySpanExporter) {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        (provider, exporter)
    }

    fn attr(span: &SpanData, key: &str) -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }

    fn app(provider: &SdkTracerProvider) -> axum::Router {
        axum::Router::new()
            .route("/api/items/{id}", get(|| async { "ok" }))
            .route(
                "/boom",
                get(|| async { (http::StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
            )
            .route(
                "/missing",
                get(|| async { (http::StatusCode::NOT_FOUND, "no") }),
            )
            .layer(
                SextantLayer::new()
                    .with_tracer(provider.tracer("test"))
                    .with_propagator(TraceContextPropagator::new()),
            )
    }

    #[tokio::test]
    async fn server_span_name_attributes_status() {
        let (provider, exporter) = provider();
        let resp = app(&provider)
            .oneshot(
                Request::get("/api/items/42?x=1")
                    .header("host", "shop.example:8080")
                    .header("user-agent", "curl/8.0")
                    .header(
                        "traceparent",
                        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    )
                    .header("x-correlation-id", "corr-1")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[CORRELATION_HEADER], "corr-1");
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 1);
        let s = &spans[0];
        assert_eq!(s.name, "GET /api/items/{id}");
        assert_eq!(s.span_kind, SpanKind::Server);
        assert_eq!(attr(s, "http.request.method").as_deref(), Some("GET"));
        assert_eq!(attr(s, "url.path").as_deref(), Some("/api/items/42"));
        assert_eq!(attr(s, "url.query").as_deref(), Some("x=1"));
        assert_eq!(attr(s, "http.route").as_deref(), Some("/api/items/{id}"));
        assert_eq!(attr(s, "http.response.status_code").as_deref(), Some("200"));
        assert_eq!(attr(s, "server.address").as_deref(), Some("shop.example"));
        assert_eq!(attr(s, "server.port").as_deref(), Some("8080"));
        assert_eq!(attr(s, "user_agent.original").as_deref(), Some("curl/8.0"));
        assert_eq!(attr(s, "network.protocol.version").as_deref(), Some("1.1"));
        assert_eq!(attr(s, "correlation.id").as_deref(), Some("corr-1"));
        assert_eq!(s.status, Status::Unset);
        assert_eq!(
            format!("{:032x}", s.span_context.trace_id()),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            s.parent_span_id,
            SpanId::from_hex("00f067aa0ba902b7").unwrap()
        );
        assert!(s.parent_span_is_remote);
    }

    #[tokio::test]
    async fn server_errors_and_generated_correlation() {
        let (provider, exporter) = provider();
        let app = app(&provider);
        let resp = app
            .clone()
            .oneshot(
                Request::get("/boom")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 500);
        let generated = resp.headers()[CORRELATION_HEADER]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(generated.len(), 32);
        let resp = app
            .clone()
            .oneshot(
                Request::get("/missing")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        let resp = app
            .oneshot(
                Request::get("/nowhere")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);

        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 3);
        assert_eq!(spans[0].name, "GET /boom");
        assert!(matches!(spans[0].status, Status::Error { .. }));
        assert_eq!(
            attr(&spans[0], "http.response.status_code").as_deref(),
            Some("500")
        );
        assert_eq!(attr(&spans[0], "correlation.id"), Some(generated.clone()));
        // A request without a correlation id gets its trace id as one.
        assert_eq!(spans[0].span_context.trace_id().to_string(), generated);
        assert_eq!(spans[0].parent_span_id, SpanId::INVALID);
        // 4xx is not a server error.
        assert_eq!(spans[1].status, Status::Unset);
        // No route matched: the path names the span and there is no http.route.
        assert_eq!(spans[2].name, "GET /nowhere");
        assert_eq!(attr(&spans[2], "http.route"), None);
    }

    #[tokio::test]
    async fn client_layer_injects_and_parents() {
        let (provider, exporter) = provider();
        // The "remote" server echoes the traceparent it received.
        let echo = tower::service_fn(|req: Request<()>| async move {
            let tp = req
                .headers()
                .get("traceparent")
                .cloned()
                .unwrap_or(HeaderValue::from_static(""));
            let corr = req.headers().get(CORRELATION_HEADER).cloned();
            let mut resp = Response::builder().status(503);
            resp = resp.header("x-seen-traceparent", tp);
            if let Some(c) = corr {
                resp = resp.header("x-seen-correlation", c);
            }
            Ok::<_, std::convert::Infallible>(resp.body(()).unwrap())
        });
        let client = ClientLayer::new()
            .with_tracer(provider.tracer("client"))
            .with_propagator(TraceContextPropagator::new())
            .layer(echo);

        let tracer = provider.tracer("app");
        let parent = Context::new()
            .with_span(tracer.start("parent"))
            .with_value(CorrelationId("c-9".into()));
        let resp = client
            .oneshot(
                Request::post("http://api.internal:9000/jobs")
                    .body(())
                    .unwrap(),
            )
            .with_context(parent.clone())
            .await
            .unwrap();
        parent.span().end();

        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 2);
        let client_span = spans
            .iter()
            .find(|s| s.span_kind == SpanKind::Client)
            .unwrap();
        let parent_span = spans.iter().find(|s| s.name == "parent").unwrap();
        assert_eq!(client_span.name, "POST");
        assert_eq!(
            client_span.parent_span_id,
            parent_span.span_context.span_id()
        );
        assert_eq!(
            attr(client_span, "server.address").as_deref(),
            Some("api.internal")
        );
        assert_eq!(attr(client_span, "server.port").as_deref(), Some("9000"));
        assert_eq!(
            attr(client_span, "url.full").as_deref(),
            Some("http://api.internal:9000/jobs")
        );
        assert_eq!(
            attr(client_span, "http.response.status_code").as_deref(),
            Some("503")
        );
        assert!(matches!(client_span.status, Status::Error { .. }));
        let seen = resp.headers()["x-seen-traceparent"].to_str().unwrap();
        assert_eq!(
            seen,
            format!(
                "00-{:032x}-{:016x}-01",
                client_span.span_context.trace_id(),
                client_span.span_context.span_id()
            )
        );
        assert_eq!(resp.headers()["x-seen-correlation"], "c-9");
    }

    #[test]
    fn host_parsing() {
        assert_eq!(host_and_port("a.b:80"), ("a.b", Some(80)));
        assert_eq!(host_and_port("a.b"), ("a.b", None));
        assert_eq!(host_and_port("[::1]:3000"), ("::1", Some(3000)));
    }
}
