// Sign-in: a session cookie from /api/v1/auth/login, then the page of the account's role
// (or the page asked for in ?next=, if it is one of ours).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  HD.header("login_submit");
  const form = document.getElementById("login-form");
  const error = document.getElementById("login-error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      const answer = await HD.api("/api/v1/auth/login", {
        method: "POST",
        redirect: false,
        body: { login: document.getElementById("login").value.trim(), password: document.getElementById("password").value },
      });
      const home = HD.HOME[answer.me.role];
      if (!home) {
        error.textContent = HD.t("login_service");
        return;
      }
      const next = new URLSearchParams(location.search).get("next") || "";
      // Only our own pages: never an address from elsewhere.
      const wanted = next.split("#")[0];
      location.href = wanted === home ? next : home;
    } catch (e) {
      error.textContent = HD.errorText(e);
    } finally {
      button.disabled = false;
    }
  });
});
