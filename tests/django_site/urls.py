from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import path

from consentmw import consent_of


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "home.html", {"csp_nonce": "n0nce"})


def granted(request: HttpRequest) -> JsonResponse:
    state = consent_of(request)
    return JsonResponse({"granted": sorted(state.granted) if state else None})


urlpatterns = [path("", home), path("granted", granted)]
