"""REST API and web page. `create_app(state)` builds the app from explicit artifacts; nothing loads at import."""
