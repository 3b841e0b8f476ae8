"""The sync Flask-Login app exactly as the seed documents write it: the benchmark's baseline.

Flask + Flask-Login + Flask-SQLAlchemy on SQLite (or PostgreSQL), Werkzeug's default password
hashing (``generate_password_hash()`` with no method: scrypt in Werkzeug 3).
It is the baseline, not a model, so the seeds' behaviour is kept on purpose:
no CSRF, a GET logout, the unchecked ``next`` redirect, a failed form login
answered 200 with the form again, and ``/api/login`` answering 201 with the
user (seed 001's ``Login`` resource).

Departures, all without effect on what is measured:
- ``user_loader`` uses ``db.session.get(User, int(user_id))`` instead of the
  seed's ``User.query.get(int(user_id))`` (the same primary-key lookup; the
  legacy ``Query.get`` warns on SQLAlchemy 2).
- Seed 001's flask-RESTful ``Resource`` classes are Flask's own ``MethodView``
  (same dispatch by method, one dependency less).
- Everything is in this one module (the seed spreads it over app.py,
  models.py and two blueprints), and the seed's hardcoded secret and database
  path are read from the environment:
  ``FLASK_REF_SECRET_KEY`` and ``FLASK_REF_DATABASE`` (a SQLite file path),
  or ``FLASK_REF_DATABASE_URL`` (any SQLAlchemy URL; the bench's PostgreSQL
  variant uses ``postgresql+psycopg://...``, psycopg 3, with Flask-SQLAlchemy's
  default pool), which wins when set.
- The seed does not show its templates; the ones beside this file are minimal.

Serve: ``gunicorn -w 2 -b 127.0.0.1:8001 app:app`` (from this folder).
Create the tables: ``python app.py create-db``.
"""

from __future__ import annotations

import os
import sys

from flask import Blueprint, Flask, flash, make_response, redirect, render_template, request, url_for
from flask.views import MethodView
from flask_login import LoginManager, UserMixin, current_user, login_required, login_user, logout_user
from flask_sqlalchemy import SQLAlchemy
from werkzeug.security import check_password_hash, generate_password_hash

# -- app.py (seed 002) -------------------------------------------------------

app = Flask(__name__)
# FLASK_REF_DATABASE_URL (e.g. postgresql+psycopg://user@host:port/db) wins; else the SQLite file FLASK_REF_DATABASE.
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get("FLASK_REF_DATABASE_URL") or (
    "sqlite:///" + os.path.abspath(os.environ.get("FLASK_REF_DATABASE", "blog.db"))
)
app.config["SECRET_KEY"] = os.environ.get("FLASK_REF_SECRET_KEY", "your-secret-key-here")
db = SQLAlchemy(app)

# Initialize LoginManager
login_manager = LoginManager()
login_manager.init_app(app)
login_manager.login_view = "auth.login"  # Redirect unlogged-in users to login page
login_manager.login_message = "Please log in first."


# -- models.py (seed 002, plus seed 001's authenticate/to_dict) ----------------


class User(UserMixin, db.Model):
    """User model"""

    __tablename__ = "users"
    id = db.Column(db.Integer, primary_key=True)
    username = db.Column(db.String(50), unique=True, nullable=False)
    email = db.Column(db.String(120), unique=True, nullable=False)
    password_hash = db.Column(db.String(256), nullable=False)

    def set_password(self, password):
        """Hash and encrypt the password (never store plaintext passwords)"""
        self.password_hash = generate_password_hash(password)

    def check_password(self, password):
        """Verify if password matches"""
        return check_password_hash(self.password_hash, password)

    # seed 001: user.authenticate(password) and user.to_dict()
    def authenticate(self, password):
        return self.check_password(password)

    def to_dict(self):
        return {"id": self.id, "username": self.username, "email": self.email}

    def __repr__(self):
        return f"<User {self.username}>"


# Define user_loader: Flask-Login uses this function to restore user object from session
@login_manager.user_loader
def load_user(user_id):
    # seed: return User.query.get(int(user_id))
    return db.session.get(User, int(user_id))


# -- app/blueprints/auth.py (seed 002) ---------------------------------------

auth_bp = Blueprint("auth", __name__)


@auth_bp.route("/register", methods=["GET", "POST"])
def register():
    """User registration"""
    if current_user.is_authenticated:
        return redirect(url_for("main.index"))
    if request.method == "POST":
        username = request.form.get("username", "").strip()
        email = request.form.get("email", "").strip()
        password = request.form.get("password", "")
        # Validate required fields
        if not username or not email or not password:
            flash("All fields are required.", "error")
            return render_template("register.html")
        # Check if username and email already exist
        if User.query.filter_by(username=username).first():
            flash("Username already taken.", "error")
            return render_template("register.html")
        if User.query.filter_by(email=email).first():
            flash("Email already registered.", "error")
            return render_template("register.html")
        # Create user
        user = User(username=username, email=email)
        user.set_password(password)  # Encrypt and store password
        db.session.add(user)
        db.session.commit()
        login_user(user)  # Auto login after registration
        flash(f"Registration successful, welcome {username}!", "success")
        return redirect(url_for("main.index"))
    return render_template("register.html")


@auth_bp.route("/login", methods=["GET", "POST"])
def login():
    """User login"""
    if current_user.is_authenticated:
        return redirect(url_for("main.index"))
    if request.method == "POST":
        username = request.form.get("username", "").strip()
        password = request.form.get("password", "")
        # user_loader finds user from database
        user = User.query.filter_by(username=username).first()
        # Verify password (password itself won't be logged)
        if user is None or not user.check_password(password):
            flash("Incorrect username or password.", "error")
            return render_template("login.html")
        login_user(user, remember=request.form.get("remember"))
        flash(f"Welcome back, {username}!", "success")
        # After login, redirect to the page before login (next parameter in URL)
        next_page = request.args.get("next")
        return redirect(next_page or url_for("main.index"))
    return render_template("login.html")


@auth_bp.route("/logout")
@login_required  # Only logged-in users can logout
def logout():
    logout_user()
    flash("Logged out successfully.", "info")
    return redirect(url_for("main.index"))


# -- main blueprint (seed 000's dashboard; the seeds' main.index) -------------

main_bp = Blueprint("main", __name__)


@main_bp.route("/")
def index():
    return render_template("index.html")


@main_bp.route("/dashboard")
@login_required
def dashboard():
    return f"Hello {current_user.username}"


# -- JSON API (seed 001's Login / Logout resources) ---------------------------


class Login(MethodView):
    def post(self):
        data = request.json
        user = User.query.filter_by(username=data.get("username")).first()
        if user is None or not user.authenticate(data.get("password")):
            response = make_response({"error": "Invalid username or ID"})
            response.status_code = 401
            return response
        login_user(user)
        return make_response(user.to_dict(), 201)


class Logout(MethodView):
    def get(self):
        logout_user()
        return make_response("logout successful", 200)


api_bp = Blueprint("api", __name__, url_prefix="/api")
api_bp.add_url_rule("/login", view_func=Login.as_view("login"))
api_bp.add_url_rule("/logout", view_func=Logout.as_view("logout"))

app.register_blueprint(auth_bp)
app.register_blueprint(main_bp)
app.register_blueprint(api_bp)


def create_db() -> None:
    """The seed runs ``flask db upgrade``; without Flask-Migrate, ``db.create_all()`` makes the same table."""
    with app.app_context():
        db.create_all()


if __name__ == "__main__":
    if sys.argv[1:] == ["create-db"]:
        create_db()
    else:
        print("usage: python app.py create-db   (serve with gunicorn app:app)", file=sys.stderr)
        sys.exit(2)
