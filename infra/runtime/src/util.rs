//! Small helpers shared by the implementations.

use tokio::sync::mpsc;

/// An unbounded receiver as a `Stream`; dropping the stream drops the receiver.
pub(crate) fn receiver_stream<T: Send + 'static>(
    rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}
