"""The seed's Flask example, carried as a faithful baseline for keel's benchmark.

The route below is the seed's code, verbatim in logic: lazy loading (cache-aside)
with redis-py in front of MariaDB read through PyMySQL with a DictCursor,
`redis_client.get(userid)`, on a miss read the database and
`redis_client.set(userid, json.dumps(user_info), ex=180)`, 404 / 500 as the seed.

Differences from the seed, and only these:
  * FIX: the seed answers 500 for every real row, because json.dumps cannot encode
    the row's datetime values (created_at, updated_at). get_user_from_db converts
    datetime values with isoformat() before returning the row. Nothing else changes.
  * Connection settings come from the environment (defaults: MariaDB 127.0.0.1:3306,
    root, empty password, database `test`; Redis 127.0.0.1:6379 db 0) so the bench
    can point it at its own database and Redis db 15.
  * get_user_from_db is not in the seed: see its comment (one persistent connection
    per worker thread).
  * A GET /healthz route (200) so the bench can time the cold start the same way as keel.
"""
import datetime
import json
import os
import threading

import pymysql
import pymysql.cursors
import redis
from flask import Flask, jsonify

app = Flask(__name__)

redis_client = redis.Redis(
    host=os.environ.get("REDIS_HOST", "127.0.0.1"),
    port=int(os.environ.get("REDIS_PORT", "6379")),
    db=int(os.environ.get("REDIS_DB", "0")),
)


# The seed does not show get_user_from_db; the brief fixes its query (DictCursor,
# SELECT id, name, email, created_at, updated_at FROM users WHERE id=%s). To keep the
# baseline fair rather than a strawman, each worker thread keeps ONE persistent
# connection (PyMySQL connections are not thread-safe, hence thread-local) instead of
# connecting per request; autocommit so every SELECT sees fresh data.
_local = threading.local()


def get_db_connection():
    connection = getattr(_local, "connection", None)
    if connection is None:
        connection = pymysql.connect(
            host=os.environ.get("MYSQL_HOST", "127.0.0.1"),
            port=int(os.environ.get("MYSQL_PORT", "3306")),
            user=os.environ.get("MYSQL_USER", "root"),
            password=os.environ.get("MYSQL_PASSWORD", ""),
            database=os.environ.get("MYSQL_DATABASE", "test"),
            cursorclass=pymysql.cursors.DictCursor,
            autocommit=True,
        )
        _local.connection = connection
    return connection


def get_user_from_db(userid):
    connection = get_db_connection()
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT id, name, email, created_at, updated_at FROM users WHERE id=%s",
                (userid,),
            )
            user = cursor.fetchone()
    except Exception:
        # drop a broken connection so the next request reconnects; the route answers 500
        _local.connection = None
        try:
            connection.close()
        except Exception:
            pass
        raise
    if user:
        # FIX (the only change to the seed's logic): json.dumps cannot encode datetime,
        # so the seed answered 500 for every real row. Convert datetimes with isoformat().
        for key, value in user.items():
            if isinstance(value, (datetime.datetime, datetime.date)):
                user[key] = value.isoformat()
    return user


@app.route('/users/<string:userid>', methods=['GET'])
def get_user(userid):
    try:
        user_info = redis_client.get(userid)
        if user_info:
            return jsonify(json.loads(user_info)), 200
        user_info = get_user_from_db(userid)
        if user_info:
            redis_client.set(userid, json.dumps(user_info), ex=180)
            return jsonify(user_info), 200
        else:
            return jsonify({"error": "User not found"}), 404
    except Exception as e:
        return jsonify({"error": str(e)}), 500


@app.route('/healthz', methods=['GET'])
def healthz():
    return jsonify({"status": "ok"}), 200
