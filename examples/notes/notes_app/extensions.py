"""The login manager, module-level as in Flask-Login; ``create_app`` attaches it to each app with its store."""

from quart_login import LoginManager

login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message = "Please log in first."
