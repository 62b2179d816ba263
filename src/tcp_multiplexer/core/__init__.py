"""The request path, protocol-blind: sessions, dispatch, target connections, pools."""
