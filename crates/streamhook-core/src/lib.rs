//! The engine between "a request arrived" and "a sink got the event": source filter,
//! classifier with history, router, durable journal and dispatcher.
